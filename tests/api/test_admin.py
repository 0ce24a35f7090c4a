"""The admin API against a real gateway: keys, the audit log, IP blocks, bad input, bootstrap.

One gateway serves the module (SQLite store, a trusted proxy at 127.0.0.1 so that tests can
speak from other client addresses, one configured block). Keys are proven to work, or not, by
calling ``/v1/models`` with them, which authenticates exactly like inference does and needs no
upstream. Every test makes its own keys and owners.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.auth.e2e import (
    Fleet,
    Node,
    admin,
    assert_clean_log,
    assert_error,
    audit_records,
    call,
    create_key,
    sdk,
    server_secret,
    wait_for,
)
from tests.plugins.processes import free_port

SECRET_SHAPE = re.compile(r"^sk-sg-[A-Za-z0-9_-]{43}$")
CONFIGURED_BLOCK = "203.0.113.0/24"


def models_config() -> dict[str, Any]:
    # Never called: these tests only list models. The port is free, so nothing answers there.
    url = f"http://127.0.0.1:{free_port()}"
    return {
        "m": {"aliases": ["m-alias"], "deployments": [{"url": url}]},
        "m2": {"deployments": [{"url": url}]},
    }


@pytest.fixture(scope="module")
def gw(fleet: Fleet) -> Iterator[Node]:
    config = {
        "models": models_config(),
        "auth": {"ip": {"trusted_proxies": ["127.0.0.1"], "block": [CONFIGURED_BLOCK]}},
    }
    node = fleet.gateway(config, {"SWARMGATE_AUTH__CACHE_TTL": "0.5"})
    yield node
    assert_clean_log(node)


def works(gw: Node, secret: str, **headers: str) -> bool:
    return call(gw.url + "/v1/models", key=secret, headers=headers).status == 200


def owner() -> str:
    return "owner-" + uuid.uuid4().hex[:8]


# ----------------------------------------------------------------- keys


def test_create_shows_the_secret_once(gw: Node) -> None:
    body = {
        "name": "web-app",
        "owner": "alice",
        "role": "user",
        "tier": "pro",
        "models": ["m"],
        "expires_in": "30d",
    }
    reply = admin(gw, "POST", "/admin/keys", body)
    assert reply.status == 201, reply.text
    key, secret = reply.body["key"], reply.body["secret"]
    assert SECRET_SHAPE.match(secret), secret
    assert key["name"] == "web-app" and key["owner"] == "alice" and key["tier"] == "pro"
    assert key["role"] == "user" and key["models"] == ["m"] and key["active"] is True
    assert key["scopes"] == ["inference:audio", "inference:image", "inference:text", "models:read"]
    assert abs(key["expires_at"] - (time.time() + 30 * 86400)) < 60
    assert key["revoked_at"] is None and "secret" not in key

    with sdk(gw, secret) as client:
        assert [m.id for m in client.models.list()] == ["m"]

    shown = admin(gw, "GET", f"/admin/keys/{key['id']}")
    assert shown.status == 200
    assert shown.body["prefixes"] == [secret[:12]]
    listed = admin(gw, "GET", "/admin/keys?owner=alice&include_revoked=true&limit=500")
    assert key["id"] in [k["id"] for k in listed.body["data"]]
    for text in (shown.text, listed.text):
        assert secret not in text and secret[12:] not in text


def test_a_key_for_an_alias_may_use_its_model(gw: Node) -> None:
    _, secret = create_key(gw, models=["m-alias"], name="Zoë's app ✓")
    with sdk(gw, secret) as client:
        assert [m.id for m in client.models.list()] == ["m"]


def test_scopes_default_to_the_role_and_can_be_set(gw: Node) -> None:
    reply = admin(gw, "POST", "/admin/keys", {"name": "g", "owner": owner(), "role": "guest"})
    assert reply.body["key"]["scopes"] == ["inference:text", "models:read"]
    narrowed = {"name": "n", "owner": owner(), "role": "admin", "scopes": ["models:read"]}
    reply = admin(gw, "POST", "/admin/keys", narrowed)
    assert reply.status == 201 and reply.body["key"]["scopes"] == ["models:read"]
    # An admin-role key narrowed to models:read is no administrator.
    assert_error(call(gw.url + "/admin/keys", key=reply.body["secret"]), 403, "permission_error")


def test_list_filters_and_pages(gw: Node) -> None:
    who = owner()
    ids = [create_key(gw, owner=who, name=f"k{i}")[0] for i in range(5)]
    assert admin(gw, "POST", f"/admin/keys/{ids[1]}/revoke").status == 200

    active = admin(gw, "GET", f"/admin/keys?owner={who}").body["data"]
    assert [k["id"] for k in active] == [i for i in ids if i != ids[1]]  # oldest first
    every = admin(gw, "GET", f"/admin/keys?owner={who}&include_revoked=true").body["data"]
    assert [k["id"] for k in every] == ids

    pages = []
    for offset in (0, 2, 4, 6):
        page = admin(
            gw, "GET", f"/admin/keys?owner={who}&include_revoked=true&limit=2&offset={offset}"
        )
        assert page.body["limit"] == 2 and page.body["offset"] == offset
        pages.append([k["id"] for k in page.body["data"]])
    assert pages == [ids[0:2], ids[2:4], ids[4:5], []]
    assert admin(gw, "GET", f"/admin/keys?owner={owner()}").body["data"] == []


def test_show_unknown_key_is_404(gw: Node) -> None:
    assert_error(admin(gw, "GET", "/admin/keys/key_0000000000000000"), 404, "invalid_request_error")


def test_rotate_gives_a_new_secret_and_keeps_the_old_for_the_grace(gw: Node) -> None:
    key_id, old = create_key(gw)
    reply = admin(gw, "POST", f"/admin/keys/{key_id}/rotate", {"grace": "1h"})
    assert reply.status == 200, reply.text
    new = reply.body["secret"]
    assert SECRET_SHAPE.match(new) and new != old
    assert reply.body["old_secret_valid_for"] == 3600
    assert works(gw, new) and works(gw, old)
    prefixes = admin(gw, "GET", f"/admin/keys/{key_id}").body["prefixes"]
    assert prefixes == [new[:12], old[:12]]  # current first

    # Without a body: the configured default grace (a day).
    reply = admin(gw, "POST", f"/admin/keys/{key_id}/rotate")
    assert reply.status == 200 and reply.body["old_secret_valid_for"] == 86400
    assert works(gw, reply.body["secret"]) and works(gw, new)

    assert_error(admin(gw, "POST", "/admin/keys/key_nope/rotate"), 404, "invalid_request_error")
    assert admin(gw, "POST", f"/admin/keys/{key_id}/revoke").status == 200
    assert_error(admin(gw, "POST", f"/admin/keys/{key_id}/rotate"), 400, "invalid_request_error")


def test_rotate_with_zero_grace_cuts_the_old_secret_at_once(gw: Node) -> None:
    key_id, old = create_key(gw)
    assert works(gw, old)
    reply = admin(gw, "POST", f"/admin/keys/{key_id}/rotate", {"grace": "0"})
    assert reply.status == 200, reply.text
    assert works(gw, reply.body["secret"])
    assert not works(gw, old)


def test_revoke(gw: Node) -> None:
    key_id, secret = create_key(gw)
    assert works(gw, secret)
    reply = admin(gw, "POST", f"/admin/keys/{key_id}/revoke")
    assert reply.status == 200
    assert reply.body["active"] is False and reply.body["revoked_at"] is not None
    assert_error(call(gw.url + "/v1/models", key=secret), 401, "authentication_error")
    again = admin(gw, "POST", f"/admin/keys/{key_id}/revoke")
    assert again.status == 200 and again.body["revoked_at"] == reply.body["revoked_at"]
    assert_error(admin(gw, "POST", "/admin/keys/key_nope/revoke"), 404, "invalid_request_error")


def test_expire(gw: Node) -> None:
    key_id, secret = create_key(gw)
    later = admin(gw, "POST", f"/admin/keys/{key_id}/expire", {"expires_in": "2h"})
    assert later.status == 200 and later.body["active"] is True
    assert abs(later.body["expires_at"] - (time.time() + 7200)) < 60
    assert works(gw, secret)
    at = time.time() + 600
    assert admin(gw, "POST", f"/admin/keys/{key_id}/expire", {"at": at}).body["expires_at"] == at

    now = admin(gw, "POST", f"/admin/keys/{key_id}/expire")
    assert now.status == 200 and now.body["active"] is False
    assert_error(call(gw.url + "/v1/models", key=secret), 401, "authentication_error")
    assert_error(admin(gw, "POST", "/admin/keys/key_nope/expire"), 404, "invalid_request_error")


# ----------------------------------------------------------------- audit log


def _admin_key_id(gw: Node) -> str:
    keys = admin(gw, "GET", "/admin/keys?owner=admin&limit=500").body["data"]
    key_id: str = next(k["id"] for k in keys if k["name"] == "bootstrap-admin")
    return key_id


def test_audit_filters_and_cursor_pages(gw: Node) -> None:
    before = time.time()
    time.sleep(0.01)
    created = [create_key(gw, owner=owner())[0] for _ in range(3)]
    reply = admin(
        gw,
        "POST",
        "/admin/keys",
        {"name": "r", "owner": "o"},
        headers={"X-Request-Id": "audit-req-1"},
    )
    created.append(reply.body["key"]["id"])
    # One authentication failure, from an address of its own.
    call(gw.url + "/v1/models", key="sk-sg-wrong", headers={"X-Forwarded-For": "198.51.100.77"})

    def stored() -> bool:
        targets = {r["target"] for r in audit_records(gw, action="key.create", since=before)}
        return targets >= set(created)

    wait_for(stored, 5, what="audit records stored")
    wait_for(
        lambda: any(
            r["client_ip"] == "198.51.100.77"
            for r in audit_records(gw, action="auth.failure", since=before)
        ),
        5,
        what="auth.failure stored",
    )

    actor = _admin_key_id(gw)
    mine = audit_records(gw, action="key.create", actor=actor, since=before)
    assert [r["target"] for r in mine] == list(reversed(created))  # newest first
    assert all(r["outcome"] == "ok" and r["actor"] == actor for r in mine)
    assert next(r for r in mine if r["target"] == created[-1])["request_id"] == "audit-req-1"
    denied = audit_records(gw, outcome="denied", since=before)
    assert denied and {r["action"] for r in denied} == {"auth.failure"}
    assert audit_records(gw, action="key.create", actor="key_nobody") == []
    middle = mine[1]["ts"]
    assert [
        r["target"] for r in audit_records(gw, action="key.create", since=before, until=middle)
    ] == list(reversed(created[:2]))

    everything = audit_records(gw)
    seen: list[int] = []
    cursor: int | None = None
    while True:
        page = admin(gw, "GET", "/admin/audit?limit=2" + (f"&cursor={cursor}" if cursor else ""))
        assert page.status == 200
        assert len(page.body["data"]) <= 2
        seen.extend(r["id"] for r in page.body["data"])
        cursor = page.body["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(seen, reverse=True) and len(set(seen)) == len(seen)
    assert seen[: len(everything)] == [r["id"] for r in everything][: len(seen)]
    assert len(seen) >= len(everything)


# ----------------------------------------------------------------- IP blocks


def test_ip_blocks_add_list_delete(gw: Node) -> None:
    listed = admin(gw, "GET", "/admin/ip-blocks").body["data"]
    assert {"cidr": CONFIGURED_BLOCK, "source": "config"}.items() <= next(
        b for b in listed if b["cidr"] == CONFIGURED_BLOCK
    ).items()
    _, secret = create_key(gw)
    inside, outside = {"X-Forwarded-For": "192.0.2.9"}, {"X-Forwarded-For": "192.0.3.9"}
    assert works(gw, secret, **inside)
    assert_error(
        call(gw.url + "/v1/models", key=secret, headers={"X-Forwarded-For": "203.0.113.5"}),
        403,
        "permission_error",
        "ip_blocked",
    )

    reply = admin(
        gw,
        "POST",
        "/admin/ip-blocks",
        {"cidr": "192.0.2.0/24", "reason": "abuse", "duration": "1h"},
    )
    assert reply.status == 201, reply.text
    assert abs(reply.body["until"] - (time.time() + 3600)) < 60
    listed = admin(gw, "GET", "/admin/ip-blocks").body["data"]
    block = next(b for b in listed if b["cidr"] == "192.0.2.0/24")
    assert block["source"] == "admin" and block["reason"] == "abuse"
    with (
        pytest.raises(openai.PermissionDeniedError) as caught,
        openai.OpenAI(
            base_url=gw.url + "/v1", api_key=secret, max_retries=0, default_headers=inside
        ) as client,
    ):
        client.models.list()
    assert caught.value.code == "ip_blocked"
    assert works(gw, secret, **outside)

    reply = admin(gw, "POST", "/admin/ip-blocks", {"cidr": "2001:db8::/32"})
    assert reply.status == 201 and reply.body["until"] is None
    assert not works(gw, secret, **{"X-Forwarded-For": "2001:db8::1"})

    assert admin(gw, "DELETE", "/admin/ip-blocks/192.0.2.0/24").status == 200
    assert admin(gw, "DELETE", "/admin/ip-blocks/2001:db8::/32").status == 200
    assert works(gw, secret, **inside)
    assert works(gw, secret, **{"X-Forwarded-For": "2001:db8::1"})
    assert_error(admin(gw, "DELETE", "/admin/ip-blocks/192.0.2.0/24"), 404, "invalid_request_error")
    assert all(
        b["cidr"] != "192.0.2.0/24" for b in admin(gw, "GET", "/admin/ip-blocks").body["data"]
    )

    def audited() -> bool:
        actions = {(r["action"], r["target"]) for r in audit_records(gw, action="ip.block")}
        actions |= {(r["action"], r["target"]) for r in audit_records(gw, action="ip.unblock")}
        return {("ip.block", "192.0.2.0/24"), ("ip.unblock", "192.0.2.0/24")} <= actions

    wait_for(audited, 5, what="ip.block and ip.unblock audited")


# ----------------------------------------------------------------- bad input


BAD_REQUESTS: list[tuple[str, str, Any]] = [
    ("POST", "/admin/keys", b"{not json"),
    ("POST", "/admin/keys", b"[1, 2]"),
    ("POST", "/admin/keys", b""),
    ("POST", "/admin/keys", {}),
    ("POST", "/admin/keys", {"name": "x"}),
    ("POST", "/admin/keys", {"name": "x", "owner": "o", "colour": "red"}),
    ("POST", "/admin/keys", {"name": "x", "owner": "o", "role": "emperor"}),
    ("POST", "/admin/keys", {"name": "x", "owner": "o", "scopes": ["fly"]}),
    ("POST", "/admin/keys", {"name": "x", "owner": "o", "scopes": "models:read"}),
    ("POST", "/admin/keys", {"name": "x", "owner": "o", "models": "m"}),
    ("POST", "/admin/keys", {"name": "x", "owner": "o", "expires_in": "soon"}),
    ("POST", "/admin/keys", {"name": "x", "owner": "o", "expires_in": "-1d"}),
    ("POST", "/admin/keys", {"name": "x", "owner": "o", "expires_at": 1000.0}),
    ("POST", "/admin/keys", {"name": "", "owner": "o"}),
    ("POST", "/admin/keys", {"name": "x" * 201, "owner": "o"}),
    ("POST", "/admin/keys", {"name": "x", "owner": "o", "tier": ""}),
    ("POST", "/admin/keys/KEY/rotate", {"grace": "forever"}),
    ("POST", "/admin/keys/KEY/rotate", {"grace": 5, "extra": 1}),
    ("POST", "/admin/keys/KEY/expire", {"expires_in": "x"}),
    ("POST", "/admin/keys/KEY/expire", {"at": "tomorrow"}),
    ("POST", "/admin/ip-blocks", {"cidr": "not-an-ip"}),
    ("POST", "/admin/ip-blocks", {"cidr": "999.1.1.1/8"}),
    ("POST", "/admin/ip-blocks", {"cidr": "10.0.0.0/8", "duration": "0"}),
    ("POST", "/admin/ip-blocks", {"cidr": "10.0.0.0/8", "reason": "r" * 501}),
    ("POST", "/admin/ip-blocks", {}),
    ("GET", "/admin/keys?limit=0", None),
    ("GET", "/admin/keys?limit=abc", None),
    ("GET", "/admin/keys?offset=-1", None),
    ("GET", "/admin/keys?include_revoked=maybe", None),
    ("GET", "/admin/audit?limit=5000", None),
    ("GET", "/admin/audit?cursor=abc", None),
    ("GET", "/admin/audit?since=yesterday", None),
    # Integers beyond the database's, and floats that are no time (issue 11: these were 500s).
    ("GET", "/admin/keys?offset=9223372036854775808", None),
    ("GET", "/admin/keys?offset=99999999999999999999999999", None),
    ("GET", "/admin/audit?cursor=9223372036854775808", None),
    ("GET", "/admin/audit?cursor=-9223372036854775809", None),
    ("GET", "/admin/audit?cursor=0", None),
    ("GET", "/admin/audit?since=nan", None),
    ("GET", "/admin/audit?until=inf", None),
    ("POST", "/admin/keys", b'{"name": "x", "owner": "o", "expires_at": NaN}'),
    ("POST", "/admin/keys", b'{"name": "x", "owner": "o", "expires_at": Infinity}'),
    ("POST", "/admin/keys/KEY/expire", b'{"at": NaN}'),
    ("POST", "/admin/keys/KEY/expire", {"at": 1e308}),
    ("POST", "/admin/keys/KEY/expire", {"expires_in": "99999999999d"}),
    ("POST", "/admin/keys/KEY/rotate", {"grace": "99999999999d"}),
    ("POST", "/admin/ip-blocks", {"cidr": "10.0.0.0/8", "duration": "99999999999d"}),
    # Keys that were created but could never be used, or named to fool a terminal (issue 11).
    ("POST", "/admin/keys", {"name": "x", "owner": "o", "models": ["nope"]}),
    ("POST", "/admin/keys", {"name": "x", "owner": "o", "models": ["m", "M"]}),
    ("POST", "/admin/keys", {"name": "x", "owner": "o", "expires_at": 1e308}),
    ("POST", "/admin/keys", {"name": "x", "owner": "o", "expires_in": "99999999999d"}),
    ("POST", "/admin/keys", {"name": "x\u0000", "owner": "o"}),
    ("POST", "/admin/keys", {"name": "x", "owner": "o\nforged: line"}),
    ("POST", "/admin/keys", {"name": "\u001b[31mred", "owner": "o"}),
    ("POST", "/admin/keys", {"name": "x", "owner": "o", "tier": "pr\u0085o"}),
]


@pytest.fixture(scope="module")
def some_key(gw: Node) -> str:
    return create_key(gw)[0]


@pytest.mark.parametrize(("method", "path", "body"), BAD_REQUESTS)
def test_bad_payload_is_a_400_json_error(
    gw: Node, some_key: str, method: str, path: str, body: Any
) -> None:
    path = path.replace("KEY", some_key)
    headers = {"Content-Type": "application/json"}
    if isinstance(body, bytes):
        reply = call(gw.url + path, method, key=gw.admin_key, raw=body, headers=headers)
    else:
        reply = admin(gw, method, path, body)
    assert_error(reply, 400, "invalid_request_error")
    assert works(gw, gw.admin_key)  # bad input never breaks the gateway


def test_nothing_changed_by_bad_payloads(gw: Node, some_key: str) -> None:
    shown = admin(gw, "GET", f"/admin/keys/{some_key}").body
    assert shown["active"] is True and shown["expires_at"] is None
    assert len(shown["prefixes"]) == 1
    blocks = {b["cidr"] for b in admin(gw, "GET", "/admin/ip-blocks").body["data"]}
    assert "10.0.0.0/8" not in blocks


# ----------------------------------------------------------------- the first admin key


def test_bootstrap_admin_key_from_the_environment_works(gw: Node) -> None:
    keys = admin(gw, "GET", "/admin/keys?owner=admin").body["data"]
    assert [k["name"] for k in keys] == ["bootstrap-admin"]
    assert keys[0]["role"] == "admin" and "admin" in keys[0]["scopes"]


def test_first_start_without_admin_key_prints_one_once(fleet: Fleet) -> None:
    store = f"sqlite+aiosqlite:///{fleet.root / 'bootstrap.db'}"
    config = {"models": models_config(), "store": {"url": store}}
    env = {"SWARMGATE_AUTH__SECRET": server_secret()}
    first = fleet.gateway(config, env, with_admin_key=False)
    printed = re.findall(r"sk-sg-[A-Za-z0-9_-]{20,}", first.output())
    assert len(printed) == 1, first.output()
    assert "created the first admin key" in first.output()
    key = printed[0]
    listed = call(first.url + "/admin/keys", key=key)
    assert listed.status == 200 and len(listed.body["data"]) == 1
    first.stop()
    assert first.output().count(key) == 1  # printed once, not logged again at shutdown

    second = fleet.gateway(config, env, with_admin_key=False)
    assert re.search(r"sk-sg-", second.output()) is None, second.output()
    assert call(second.url + "/admin/keys", key=key).status == 200
    assert_clean_log(second)


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/admin/keys", {"GET", "POST"}),
        ("DELETE", "/admin/keys/KEY", {"GET", "PATCH"}),
        ("GET", "/admin/keys/KEY/rotate", {"POST"}),
        ("POST", "/admin/audit", {"GET"}),
        ("PATCH", "/admin/ip-blocks/10.0.0.0/8", {"DELETE"}),
        ("DELETE", "/openapi.json", {"GET"}),
        ("POST", "/docs", {"GET"}),
    ],
)
def test_a_wrong_method_is_a_405_with_allow(
    gw: Node, some_key: str, method: str, path: str, allowed: set[str]
) -> None:
    reply = admin(gw, method, path.replace("KEY", some_key))
    assert_error(reply, 405, "invalid_request_error", "method_not_allowed")
    assert {m.strip() for m in reply.headers["allow"].split(",")} - {"HEAD"} == allowed
