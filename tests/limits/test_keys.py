"""A key given a tier and its own limits through the admin API, on a running gateway: the
change applies to the next request (its cached principal is dropped)."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import orjson

from tests.limits.e2e import Upstream
from tests.limits.test_sdk import create_key
from tests.plugins.processes import Gateway

CHAT = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})


def request(gw: Gateway, method: str, path: str, body: bytes, key: str) -> tuple[int, Any]:
    req = urllib.request.Request(
        gw.url + path,
        data=body,
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
        method=method,
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as reply:
            return reply.status, orjson.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def test_patch_gives_a_key_a_tier_and_limits_applied_at_once(
    gateway_factory: Callable[..., Gateway],
) -> None:
    upstream = Upstream()
    try:
        gw = gateway_factory(
            {
                "models": {"m": {"deployments": [{"url": upstream.url}]}},
                "auth": {"cache_ttl": 60},  # only the dropped cache explains a quick change
            }
        )
        secret = create_key(gw, "default")
        key_id = request(gw, "GET", "/admin/keys", b"", gw.admin_key)[1]["data"][-1]["id"]
        chat = [request(gw, "POST", "/v1/chat/completions", CHAT, secret)[0] for _ in range(5)]
        assert chat == [200] * 5  # default: unlimited
        patch = orjson.dumps({"tier": "free", "limits": {"rpm": 2}})
        status, view = request(gw, "PATCH", f"/admin/keys/{key_id}", patch, gw.admin_key)
        assert status == 200 and view["tier"] == "free" and view["limits"] == {"rpm": 2}
        chat = [request(gw, "POST", "/v1/chat/completions", CHAT, secret) for _ in range(3)]
        assert [s for s, _ in chat] == [200, 200, 429]
        assert chat[-1][1]["error"]["type"] == "requests"
        # limits: null clears the key's own: the free tier's 10 a minute again.
        clear = orjson.dumps({"limits": None})
        status, view = request(gw, "PATCH", f"/admin/keys/{key_id}", clear, gw.admin_key)
        assert status == 200 and view["limits"] is None
        assert request(gw, "POST", "/v1/chat/completions", CHAT, secret)[0] == 200
        bad = orjson.dumps({"limits": {"rpm": -1}})
        status, body = request(gw, "PATCH", f"/admin/keys/{key_id}", bad, gw.admin_key)
        assert status == 400 and body["error"]["param"] == "limits"
    finally:
        upstream.close()
