"""The way out of an automatic IP block, and the key lifecycle, on real gateways.

Ten bad keys from one address block it, the admin's valid key and the admin API's own unblock
route included. The block is kept in the store, so ``swarmgate ip-blocks list`` (run from a
shell against the store) shows it and ``swarmgate ip-blocks delete`` lifts it on the running
gateway without a restart (here without Redis: through the gateway's periodic reload). With
``auth.ip.never_block`` covering the address, no run of failures blocks it.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

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
    wait_for,
)
from tests.plugins.processes import free_port

RELOAD_LIMIT = 15.0  # the gateway reloads IP blocks from the store every 10 s


def models() -> dict[str, Any]:
    url = f"http://127.0.0.1:{free_port()}"  # never called: keys are tried on /v1/models
    return {"m": {"deployments": [{"url": url}]}}


def bad_key(gw: Node) -> int:
    return call(gw.url + "/v1/models", key="sk-sg-" + secrets.token_urlsafe(32)).status


def cli(fleet: Fleet, gw: Node, *args: str) -> tuple[int, Any, str]:
    result = fleet.cli(*args, "--config", str(gw.config_path), env=gw.env)
    out = json.loads(result.stdout) if result.stdout.strip() else None
    return result.returncode, out, result.stderr


@pytest.fixture(scope="module")
def gw(fleet: Fleet) -> Iterator[Node]:
    node = fleet.gateway({"models": models()})
    yield node
    assert_clean_log(node)


@pytest.fixture(scope="module")
def exempt(fleet: Fleet) -> Iterator[Node]:
    node = fleet.gateway({"models": models(), "auth": {"ip": {"never_block": ["127.0.0.0/8"]}}})
    yield node
    assert_clean_log(node)


def test_the_cli_lifts_an_automatic_block_that_locked_out_the_admin(fleet: Fleet, gw: Node) -> None:
    assert admin(gw, "GET", "/admin/keys").status == 200
    assert [bad_key(gw) for _ in range(10)] == [401] * 10
    assert_error(admin(gw, "GET", "/admin/keys"), 403, "permission_error", "ip_blocked")
    # The admin API cannot lift it: its caller is the blocked address.
    reply = admin(gw, "DELETE", "/admin/ip-blocks/127.0.0.1")
    assert_error(reply, 403, "permission_error", "ip_blocked")

    def stored() -> list[dict[str, Any]]:
        code, out, err = cli(fleet, gw, "ip-blocks", "list")
        assert code == 0, err
        return [b for b in out["data"] if b["cidr"] == "127.0.0.1/32"]

    wait_for(lambda: bool(stored()), 10, 0.2, "the automatic block in the store")
    (block,) = stored()
    assert block["source"] == "failures"
    assert block["reason"] == "too many failed attempts"
    assert block["until"] == pytest.approx(time.time() + 300, abs=30)

    code, out, err = cli(fleet, gw, "ip-blocks", "delete", "127.0.0.1")
    assert code == 0, err
    assert out == {"cidr": "127.0.0.1/32", "unblocked": True}
    wait_for(
        lambda: admin(gw, "GET", "/admin/keys").status == 200,
        RELOAD_LIMIT,
        0.2,
        "the admin key working again",
    )
    assert stored() == []
    unblocks = audit_records(gw, action="ip.unblock", actor="cli")
    assert [r["target"] for r in unblocks] == ["127.0.0.1/32"]
    assert audit_records(gw, action="ip.autoblock")


def test_deleting_a_block_that_is_not_stored_says_so(fleet: Fleet, gw: Node) -> None:
    code, out, err = cli(fleet, gw, "ip-blocks", "delete", "203.0.113.0/24")
    assert code == 1 and out == {"cidr": "203.0.113.0/24", "unblocked": False}
    assert "not blocked in the store" in err
    code, _, err = cli(fleet, gw, "ip-blocks", "delete", "not-an-address")
    assert code == 2 and "not an IP address" in err


def test_never_block_keeps_the_address_out_of_automatic_blocks(fleet: Fleet, exempt: Node) -> None:
    assert [bad_key(exempt) for _ in range(15)] == [401] * 15
    assert admin(exempt, "GET", "/admin/keys").status == 200
    assert not audit_records(exempt, action="ip.autoblock")
    code, out, err = cli(fleet, exempt, "ip-blocks", "list")
    assert code == 0 and out == {"data": []}, err


@pytest.fixture(scope="module")
def lifecycle_gw(fleet: Fleet) -> Iterator[Node]:
    auth = {
        "default_key_expiry": 3600,
        "rotation_period": 1,
        "key_retention": 0,
        "lifecycle_interval": 0.2,
        "cache_ttl": 0.2,
    }
    node = fleet.gateway({"models": models(), "auth": auth})
    yield node
    assert_clean_log(node)


def test_default_expiry_and_never_through_the_admin_api(lifecycle_gw: Node) -> None:
    gw = lifecycle_gw
    reply = admin(gw, "POST", "/admin/keys", {"name": "a", "owner": "o"})
    assert reply.status == 201
    assert reply.body["key"]["expires_at"] == pytest.approx(time.time() + 3600, abs=30)
    reply = admin(gw, "POST", "/admin/keys", {"name": "b", "owner": "o", "expires_in": "never"})
    assert reply.status == 201 and reply.body["key"]["expires_at"] is None
    reply = admin(gw, "POST", "/admin/keys", {"name": "c", "owner": "o", "expires_in": "2h"})
    assert reply.body["key"]["expires_at"] == pytest.approx(time.time() + 7200, abs=30)


def test_due_for_rotation_is_listed_and_counted(fleet: Fleet, lifecycle_gw: Node) -> None:
    gw = lifecycle_gw
    key_id, _ = create_key(gw)
    time.sleep(1.2)
    due = admin(gw, "GET", "/admin/keys?due_for_rotation=true&limit=500").body["data"]
    assert key_id in {k["id"] for k in due}
    assert admin(gw, "POST", f"/admin/keys/{key_id}/rotate", {"grace": "0"}).status == 200
    due = admin(gw, "GET", "/admin/keys?due_for_rotation=true&limit=500").body["data"]
    assert key_id not in {k["id"] for k in due}

    def gauge() -> float:
        for line in call(gw.url + "/metrics").text.splitlines():
            if line.startswith("gateway_keys_due_for_rotation "):
                return float(line.split()[1])
        return -1.0

    wait_for(lambda: gauge() >= 1, 5, 0.1, "the gauge counting due keys")
    code, out, err = cli(fleet, gw, "keys", "list", "--due-for-rotation")
    assert code == 0, err
    assert out["data"] and all(k["active"] for k in out["data"])


def test_asking_for_due_keys_without_a_period_is_a_400(gw: Node) -> None:
    reply = admin(gw, "GET", "/admin/keys?due_for_rotation=true")
    assert_error(reply, 400, "invalid_request_error")


def test_revoked_keys_are_deleted_after_the_retention(lifecycle_gw: Node) -> None:
    gw = lifecycle_gw
    key_id, secret = create_key(gw)
    assert call(gw.url + "/v1/models", key=secret).status == 200
    assert admin(gw, "POST", f"/admin/keys/{key_id}/revoke").status == 200
    wait_for(lambda: admin(gw, "GET", f"/admin/keys/{key_id}").status == 404, 5, 0.1, "deletion")
    assert call(gw.url + "/v1/models", key=secret).status == 401

    # The audit log keeps the key's history, and records its deletion (written behind).
    def recorded(action: str) -> bool:
        return key_id in {r["target"] for r in audit_records(gw, action=action)}

    wait_for(lambda: recorded("key.revoke") and recorded("key.delete"), 5, 0.1, "audit records")
