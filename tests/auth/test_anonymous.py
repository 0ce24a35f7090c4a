"""Anonymous access as the guest role: off by default, guest scopes only when switched on."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable

import openai
import pytest

from tests.plugins.processes import Gateway, Sim


def _get(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


@pytest.mark.parametrize("anonymous", [False, True])
def test_callers_without_a_key_are_guests_only_when_allowed(
    sim_factory: Callable[..., Sim], gateway_factory: Callable[..., Gateway], anonymous: bool
) -> None:
    sim = sim_factory({"m": {"ttft_ms": 1, "tokens_per_second": 1000}})
    config = {
        "auth": {"anonymous": anonymous},
        "models": {
            "m": {"deployments": [{"url": sim.url}]},
        },
    }
    gw = gateway_factory(config)
    status, body = _get(gw.url + "/v1/models")
    if not anonymous:
        assert status == 401
        assert body["error"]["code"] == "invalid_api_key"  # type: ignore[index]
        return
    assert status == 200
    request = urllib.request.Request(
        gw.url + "/v1/chat/completions",
        data=json.dumps(
            {"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
        ).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as r:
        assert json.loads(r.read())["choices"]
    assert _get(gw.url + "/admin/keys")[0] == 403
    # A wrong key is still refused, not downgraded to a guest.
    bad = openai.OpenAI(base_url=gw.url + "/v1", api_key="sk-sg-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
