"""A trusted proxy is never auto-blocked, through a real gateway that trusts 127.0.0.1.

The tests' own connections come from 127.0.0.1, so they play the proxy. Failures that arrive
with no usable client address (no ``X-Forwarded-For``, an empty one, or garbage) are audited
as from an unknown client, saying why, and must not block the proxy (and with it every client
behind it); failures of a forwarded client are still counted against that client.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from tests.auth.e2e import (
    Fleet,
    Node,
    assert_clean_log,
    assert_error,
    audit_records,
    call,
    create_key,
    wait_for,
)
from tests.plugins.processes import free_port

MAX_FAILURES = 3


@pytest.fixture(scope="module")
def gw(fleet: Fleet) -> Iterator[Node]:
    url = f"http://127.0.0.1:{free_port()}"  # never called: keys are tried on /v1/models
    config: dict[str, Any] = {
        "models": {"m": {"deployments": [{"url": url}]}},
        "auth": {
            "ip": {
                "trusted_proxies": ["127.0.0.1"],
                "max_failures": MAX_FAILURES,
                "failure_window": 60,
                "block_seconds": 300,
            }
        },
    }
    node = fleet.gateway(config)
    yield node
    node.stop()
    assert_clean_log(node)


def models(gw: Node, key: str, rid: str | None = None, xff: str | None = None) -> int:
    headers = {"X-Request-ID": rid} if rid else {}
    if xff is not None:
        headers["X-Forwarded-For"] = xff
    return call(gw.url + "/v1/models", key=key, headers=headers).status


def test_failures_without_a_usable_client_address_never_block_the_proxy(gw: Node) -> None:
    _, secret = create_key(gw)
    sent: dict[str, str] = {}
    for n in range(MAX_FAILURES * 3):
        bad = "sk-sg-" + secrets.token_urlsafe(32)
        for xff, why in (("garbage", "malformed"), ("", "missing"), (None, "missing")):
            rid = f"proxy-{why}-{n}-{xff!r}"
            assert models(gw, bad, rid, xff) == 401
            sent[rid] = why
    # The proxy, and every client behind it, still gets through.
    assert models(gw, secret) == 200
    assert models(gw, secret, xff="garbage") == 200
    assert models(gw, secret, xff="198.51.100.20") == 200

    def failures() -> dict[str, dict[str, Any]]:
        return {
            r["request_id"]: r
            for r in audit_records(gw, action="auth.failure")
            if (r["request_id"] or "").startswith("proxy-")
        }

    wait_for(lambda: set(failures()) == set(sent), 10, 0.1, "the failures audited")
    for rid, record in failures().items():
        assert record["client_ip"] == "unknown", record
        assert record["details"]["forwarded_for"] == sent[rid], record
        assert record["details"]["proxy"] == "127.0.0.1", record
    blocks = audit_records(gw, action="ip.autoblock")
    assert not [b for b in blocks if b["target"] == "127.0.0.1"], blocks


def test_a_forwarded_client_is_still_blocked_on_its_own(gw: Node) -> None:
    _, secret = create_key(gw)
    client = "198.51.100.21"
    for _ in range(MAX_FAILURES):
        assert models(gw, "sk-sg-" + secrets.token_urlsafe(32), xff=client) == 401
    reply = call(gw.url + "/v1/models", key=secret, headers={"X-Forwarded-For": client})
    assert_error(reply, 403, "permission_error", "ip_blocked")
    assert models(gw, secret) == 200  # the proxy is not
