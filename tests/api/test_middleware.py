"""CORS and trusted hosts, configured in server.cors_origins and server.trusted_hosts."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable

import pytest

from tests.plugins.processes import Gateway, Sim


def _request(
    gw: Gateway, method: str, path: str, headers: dict[str, str]
) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(gw.url + path, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            r.read()
            return r.status, {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as exc:
        with exc:
            exc.read()
            return exc.code, {k.lower(): v for k, v in exc.headers.items()}


def test_cors_and_trusted_hosts(
    sim_factory: Callable[..., Sim], gateway_factory: Callable[..., Gateway]
) -> None:
    sim = sim_factory({"m": {"ttft_ms": 1, "tokens_per_second": 1000}})
    gw = gateway_factory(
        {
            "server": {
                "cors_origins": ["https://app.example"],
                "trusted_hosts": ["127.0.0.1", "gateway.internal"],
            },
            "models": {"m": {"deployments": [{"url": sim.url}]}},
        }
    )
    status, headers = _request(
        gw,
        "OPTIONS",
        "/v1/chat/completions",
        {
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert status == 200
    assert headers["access-control-allow-origin"] == "https://app.example"
    status, headers = _request(
        gw,
        "GET",
        "/v1/models",
        {"Origin": "https://app.example", "Authorization": f"Bearer {gw.admin_key}"},
    )
    assert status == 200
    assert headers["access-control-allow-origin"] == "https://app.example"
    assert "x-request-id" in headers["access-control-expose-headers"]
    _, headers = _request(
        gw,
        "OPTIONS",
        "/v1/models",
        {"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
    )
    assert "access-control-allow-origin" not in headers
    assert _request(gw, "GET", "/health", {"Host": "evil.example"})[0] == 400
    assert _request(gw, "GET", "/health", {"Host": "gateway.internal"})[0] == 200


def test_a_bad_host_is_a_json_error_with_the_request_id(
    sim_factory: Callable[..., Sim], gateway_factory: Callable[..., Gateway]
) -> None:
    sim = sim_factory({"m": {"ttft_ms": 1, "tokens_per_second": 1000}})
    gw = gateway_factory(
        {
            "server": {"trusted_hosts": ["127.0.0.1", "*.gateway.internal"]},
            "models": {"m": {"deployments": [{"url": sim.url}]}},
        }
    )
    request = urllib.request.Request(
        gw.url + "/v1/models", headers={"Host": "evil.example", "X-Request-ID": "host-1"}
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    with caught.value as exc:
        assert exc.code == 400 and exc.headers["content-type"] == "application/json"
        error = json.loads(exc.read())["error"]
    assert error["code"] == "invalid_host" and error["request_id"] == "host-1"
    assert _request(gw, "GET", "/health", {"Host": "a.gateway.internal:8000"})[0] == 200
    assert _request(gw, "GET", "/health", {"Host": "gateway.internal.evil"})[0] == 400
