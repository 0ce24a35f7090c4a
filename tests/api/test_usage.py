"""The usage ledger end to end: requests through the official SDK become one record each
(answered, refused by a limit or for an unknown model, failed, cut), unauthenticated ones
none; ``GET /v1/usage`` shows a key its own usage, a token (JWT) its subject's, an anonymous
guest none (403) and an admin everyone's; ``GET /admin/usage``; JSON and CSV; errors in
OpenAI's schema."""

from __future__ import annotations

import csv
import io
import secrets
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import jwt
import openai
import pytest
import yaml

from tests.api.e2e import FAST, MESSAGES, assert_clean_log
from tests.auth.e2e import admin, assert_error, call, create_key, wait_for
from tests.plugins.processes import Gateway, Processes

PRICES = {"input_cost_per_1k": 1.0, "output_cost_per_1k": 2.0, "cost_per_request": 0.01}


@pytest.fixture(scope="module")
def gw(procs: Processes) -> Iterator[Gateway]:
    sim = procs.sim({"chat": FAST})
    gateway = procs.gateway(
        {
            "models": {"chat": {"deployments": [{"url": sim.url, "name": "sim-a", **PRICES}]}},
            "ledger": {"flush_interval": 0.1},
            "limits": {"tiers": {"tiny": {"rpm": 1}}},
        }
    )
    yield gateway
    assert_clean_log(gateway)


def ledger_rows(gw: Gateway) -> dict[str, dict[str, Any]]:
    """The gateway's ledger rows by request id, read from its SQLite file."""
    url = yaml.safe_load(gw.config_path.read_text())["store"]["url"]
    with sqlite3.connect(url.partition(":///")[2]) as db:
        db.row_factory = sqlite3.Row
        return {row["request_id"]: dict(row) for row in db.execute("SELECT * FROM usage_ledger")}


def client(gw: Gateway, key: str, rid: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=gw.url + "/v1",
        api_key=key,
        max_retries=0,
        timeout=10,
        default_headers={"X-Request-ID": rid},
    )


@pytest.fixture(scope="module")
def traffic(gw: Gateway) -> dict[str, Any]:
    """One request of each kind; what the SDK saw of them."""
    key_a, secret_a = create_key(gw, owner="alice")
    key_b, secret_b = create_key(gw, owner="bob")
    seen: dict[str, Any] = {"key_a": key_a, "key_b": key_b, "a": secret_a, "b": secret_b}
    with client(gw, secret_a, "u-ok") as c:
        seen["ok"] = c.chat.completions.create(model="chat", messages=MESSAGES, max_tokens=5)
    with client(gw, secret_a, "u-stream") as c:
        chunks = list(
            c.chat.completions.create(
                model="chat",
                messages=MESSAGES,
                max_tokens=6,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        seen["stream"] = chunks[-1].usage
    with client(gw, secret_a, "u-cut") as c, pytest.raises(openai.APIError):
        stream = c.chat.completions.create(
            model="chat",
            messages=MESSAGES,
            max_tokens=50,
            stream=True,
            extra_headers={"X-Sim-Fail": "reset:2"},
        )
        for _ in stream:
            pass
    with client(gw, secret_a, "u-404") as c, pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="nope", messages=MESSAGES)
    with client(gw, secret_a, "u-5xx") as c, pytest.raises(openai.InternalServerError):
        c.chat.completions.create(
            model="chat", messages=MESSAGES, extra_headers={"X-Sim-Fail": "error:503"}
        )
    with client(gw, "sk-sg-" + "x" * 43, "u-401") as c, pytest.raises(openai.AuthenticationError):
        c.chat.completions.create(model="chat", messages=MESSAGES)
    with client(gw, secret_b, "u-b") as c:
        c.chat.completions.create(model="chat", messages=MESSAGES, max_tokens=3)
    seen["key_c"], secret_c = create_key(gw, owner="carol", tier="tiny")
    with client(gw, secret_c, "u-c1") as c:
        c.chat.completions.create(model="chat", messages=MESSAGES, max_tokens=3)
    with client(gw, secret_c, "u-429") as c, pytest.raises(openai.RateLimitError):
        c.chat.completions.create(model="chat", messages=MESSAGES, max_tokens=3)
    expected = {"u-ok", "u-stream", "u-cut", "u-404", "u-5xx", "u-b", "u-c1", "u-429"}
    wait_for(lambda: expected <= set(ledger_rows(gw)), 10, 0.1, "the ledger rows")
    return seen


def test_one_record_per_authenticated_request(gw: Gateway, traffic: dict[str, Any]) -> None:
    rows = ledger_rows(gw)
    mine = {rid: row for rid, row in rows.items() if rid.startswith("u-")}
    assert set(mine) == {"u-ok", "u-stream", "u-cut", "u-404", "u-5xx", "u-b", "u-c1", "u-429"}
    assert "u-401" not in rows
    ok, usage = mine["u-ok"], traffic["ok"].usage
    assert (ok["key_id"], ok["owner"], ok["tier"]) == (traffic["key_a"], "alice", "default")
    assert (ok["model"], ok["deployment"], ok["route"]) == ("chat", "sim-a", "/v1/chat/completions")
    assert (ok["tokens_in"], ok["tokens_out"]) == (usage.prompt_tokens, usage.completion_tokens)
    assert ok["cost"] == pytest.approx(
        0.01 + (usage.prompt_tokens * 1.0 + usage.completion_tokens * 2.0) / 1000
    )
    assert (ok["status"], ok["streamed"], ok["cut"], ok["ttft"]) == (200, 0, 0, None)
    assert 0 < ok["latency"] < 10
    stream = mine["u-stream"]
    assert (stream["status"], stream["streamed"], stream["cut"]) == (200, 1, 0)
    assert stream["tokens_out"] == traffic["stream"].completion_tokens == 6
    assert 0 < stream["ttft"] <= stream["latency"]
    cut = mine["u-cut"]
    assert (cut["streamed"], cut["cut"], cut["status"]) == (1, 1, 502)
    assert cut["ttft"] is not None
    assert (mine["u-404"]["status"], mine["u-404"]["model"], mine["u-404"]["cost"]) == (
        404,
        "nope",
        0.0,
    )
    assert mine["u-404"]["deployment"] is None
    assert (mine["u-5xx"]["status"], mine["u-5xx"]["deployment"]) == (502, "sim-a")
    assert mine["u-b"]["key_id"] == traffic["key_b"]
    limited = mine["u-429"]  # refused by the tier's limit: a record, at no cost
    assert (limited["status"], limited["tier"], limited["key_id"]) == (
        429,
        "tiny",
        traffic["key_c"],
    )
    assert (limited["cost"], limited["deployment"]) == (0.0, None)


def test_a_key_sees_its_own_usage(gw: Gateway, traffic: dict[str, Any]) -> None:
    reply = call(gw.url + "/v1/usage?group_by=key&bucket=none", key=traffic["a"])
    assert reply.status == 200, reply.text
    body = reply.body
    assert body["object"] == "usage.report"
    assert [row["key"] for row in body["data"]] == [traffic["key_a"]]
    assert body["totals"]["requests"] == 5 and body["totals"]["errors"] == 3
    assert body["totals"]["cut"] == 1
    for query in (f"key={traffic['key_b']}", "owner=bob"):
        assert_error(call(gw.url + "/v1/usage?" + query, key=traffic["a"]), 403, "permission_error")


def test_an_admin_sees_everyones(gw: Gateway, traffic: dict[str, Any]) -> None:
    for path in ("/v1/usage", "/admin/usage"):
        body = admin(gw, "GET", path + "?group_by=owner,model&bucket=day").body
        by = {(r["owner"], r["model"]): r["requests"] for r in body["data"]}
        assert by[("alice", "chat")] == 4 and by[("alice", "nope")] == 1, by
        assert by[("bob", "chat")] == 1 and by[("carol", "chat")] == 2, by
        assert {r["date"][-10:] for r in body["data"]} == {"T00:00:00Z"}
        only_bob = admin(gw, "GET", path + "?owner=bob&bucket=hour").body
        assert [r["key"] for r in only_bob["data"]] == [traffic["key_b"]]
        assert only_bob["totals"]["requests"] == 1


def test_csv_by_parameter_or_accept(gw: Gateway, traffic: dict[str, Any]) -> None:
    for path, headers in (
        ("/v1/usage?format=csv&group_by=key", {}),
        ("/v1/usage?group_by=key", {"Accept": "text/csv"}),
    ):
        reply = call(gw.url + path, key=traffic["a"], headers=headers)
        assert reply.status == 200 and reply.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(reply.text)))
        assert [r["key"] for r in rows] == [traffic["key_a"]]
        assert rows[0]["requests"] == "5"
        assert list(rows[0])[:3] == ["bucket", "date", "key"]


def test_errors_are_openai_errors(gw: Gateway, traffic: dict[str, Any]) -> None:
    base = gw.url + "/v1/usage"
    assert_error(call(base), 401, "authentication_error")
    assert_error(call(base + "?bucket=week", key=traffic["a"]), 400, "invalid_request_error")
    for query in ("start=yesterday", "group_by=tier", "start=2030-01-02&end=2030-01-01"):
        reply = call(base + "?" + query, key=traffic["a"])
        assert_error(reply, 400, "invalid_request_error")
        assert reply.body["error"]["param"] in {"start", "group_by"}, reply.body
    assert_error(call(gw.url + "/admin/usage", key=traffic["a"]), 403, "permission_error")


# ----------------------------------------------------------------- tokens and guests

JWT_SECRET = "jwt-" + secrets.token_hex(24)


def token(subject: str, role: str = "user") -> str:
    now = int(time.time())
    claims = {"sub": subject, "role": role, "iat": now, "exp": now + 600}
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


@pytest.fixture(scope="module")
def open_gw(procs: Processes) -> Iterator[Gateway]:
    """A gateway taking API keys, HS256 tokens and anonymous guests."""
    sim = procs.sim({"chat": FAST})
    gateway = procs.gateway(
        {
            "models": {"chat": {"deployments": [{"url": sim.url, "name": "sim-a", **PRICES}]}},
            "ledger": {"flush_interval": 0.1},
            "auth": {"anonymous": True, "jwt": {"enabled": True, "algorithms": ["HS256"]}},
        },
        {"SWARMGATE_AUTH__JWT__HS256_SECRET": JWT_SECRET},
    )
    yield gateway
    assert_clean_log(gateway)


@pytest.fixture(scope="module")
def mixed(open_gw: Gateway) -> dict[str, Any]:
    """Requests by two tokens, by keys of alice and of carol, and by a guest."""
    gw = open_gw
    key_alice, secret_alice = create_key(gw, owner="alice")
    key_carol, secret_carol = create_key(gw, owner="carol")
    sent = {
        "t-alice-1": token("alice"),
        "t-alice-2": token("alice"),
        "t-bob": token("bob"),
        "k-alice": secret_alice,
        "k-carol": secret_carol,
    }
    for rid, credential in sent.items():
        with client(gw, credential, rid) as c:
            c.chat.completions.create(model="chat", messages=MESSAGES, max_tokens=3)
    body = {"model": "chat", "messages": MESSAGES, "max_tokens": 3}
    guest = call(  # no Authorization header at all
        gw.url + "/v1/chat/completions", "POST", json_body=body, headers={"X-Request-ID": "guest"}
    )
    assert guest.status == 200, guest.text
    with client(gw, token("alice"), "t-alice-404") as c, pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="nope", messages=MESSAGES)
    expected = {*sent, "t-alice-404", "guest"}
    wait_for(lambda: expected <= set(ledger_rows(gw)), 10, 0.1, "the ledger rows")
    rows = ledger_rows(gw)
    assert {rid: (rows[rid]["key_id"], rows[rid]["owner"]) for rid in expected} == {
        "t-alice-1": (None, "alice"),
        "t-alice-2": (None, "alice"),
        "t-alice-404": (None, "alice"),
        "t-bob": (None, "bob"),
        "k-alice": (key_alice, "alice"),
        "k-carol": (key_carol, "carol"),
        "guest": (None, "anonymous"),
    }
    return {"key_alice": key_alice, "key_carol": key_carol}


def by_owner_and_key(body: dict[str, Any]) -> dict[tuple[str, str | None], int]:
    return {(row["owner"], row["key"]): row["requests"] for row in body["data"]}


def test_a_token_sees_its_subjects_usage(open_gw: Gateway, mixed: dict[str, Any]) -> None:
    """A token's subject is an owner, as for the owner limits and budgets: alice's token
    sees alice's requests, by token and by her key, and nobody else's."""
    base = open_gw.url + "/v1/usage?group_by=owner,key&bucket=none"
    for query in ("", "&owner=alice"):
        reply = call(base + query, key=token("alice"))
        assert reply.status == 200, reply.text
        assert by_owner_and_key(reply.body) == {
            ("alice", None): 3,
            ("alice", mixed["key_alice"]): 1,
        }
        assert reply.body["filters"]["owner"] == "alice"
        assert (reply.body["totals"]["requests"], reply.body["totals"]["errors"]) == (4, 1)
    bob = call(base, key=token("bob")).body
    assert by_owner_and_key(bob) == {("bob", None): 1}
    assert call(base, key=token("dave")).body["data"] == []  # a subject with no usage yet
    csv_reply = call(base + "&format=csv", key=token("bob"))
    assert [r["owner"] for r in csv.DictReader(io.StringIO(csv_reply.text))] == ["bob"]


def test_a_token_cannot_ask_for_anyone_elses(open_gw: Gateway, mixed: dict[str, Any]) -> None:
    base = open_gw.url + "/v1/usage"
    for query, param in (
        ("owner=bob", "owner"),
        ("owner=anonymous", "owner"),
        (f"key={mixed['key_carol']}", "key"),
    ):
        reply = call(f"{base}?{query}", key=token("alice"))
        assert_error(reply, 403, "permission_error")
        assert reply.body["error"]["param"] == param
    assert_error(call(open_gw.url + "/admin/usage", key=token("alice")), 403, "permission_error")


def test_a_token_named_like_the_guest_sees_no_guests_usage(
    open_gw: Gateway, mixed: dict[str, Any]
) -> None:
    """Guests are recorded under the owner ``anonymous``: a token whose subject is that name
    must not be shown their usage as its own."""
    for query in ("", "?owner=anonymous"):
        reply = call(open_gw.url + "/v1/usage" + query, key=token("anonymous"))
        assert_error(reply, 403, "permission_error")
        assert "data" not in reply.body


def test_an_admin_token_sees_everyones(open_gw: Gateway, mixed: dict[str, Any]) -> None:
    reply = call(open_gw.url + "/v1/usage?group_by=owner&bucket=none", key=token("root", "admin"))
    assert reply.status == 200, reply.text
    by = {row["owner"]: row["requests"] for row in reply.body["data"]}
    assert by == {"alice": 4, "bob": 1, "carol": 1, "anonymous": 1}


def test_an_anonymous_caller_gets_a_403_and_no_data(
    open_gw: Gateway, mixed: dict[str, Any]
) -> None:
    """The guest's own request is in the ledger (the admin sees it), yet a caller without
    credentials is told plainly that usage needs a key or a token; a bad credential is a
    401, never downgraded to a guest."""
    by = by_owner_and_key(admin(open_gw, "GET", "/v1/usage?group_by=owner,key&bucket=none").body)
    assert by[("anonymous", None)] == 1
    base = open_gw.url + "/v1/usage"
    for query in ("", "?owner=anonymous", f"?key={mixed['key_alice']}", "?format=csv"):
        reply = call(base + query)
        assert_error(reply, 403, "permission_error")
        assert "data" not in reply.body
        assert "API key" in reply.body["error"]["message"]
    assert_error(call(open_gw.url + "/admin/usage"), 403, "permission_error")
    assert_error(call(base, key="sk-sg-" + "x" * 43), 401, "authentication_error")
    assert_error(call(base, key=token("alice")[:-4] + "AAAA"), 401, "authentication_error")
