"""The official OpenAI SDK against a real limited gateway: a 429 it understands (body, type,
Retry-After), the x-ratelimit-* headers on every admitted answer, and its own retry waiting
and succeeding."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable

import openai
import orjson

from tests.limits.e2e import Upstream
from tests.plugins.processes import Gateway

MESSAGES = [{"role": "user", "content": "hi"}]


def create_key(gw: Gateway, tier: str) -> str:
    request = urllib.request.Request(
        gw.url + "/admin/keys",
        data=orjson.dumps({"name": "sdk", "owner": "sdk", "tier": tier}),
        headers={"authorization": f"Bearer {gw.admin_key}", "content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        secret: str = orjson.loads(reply.read())["secret"]
    return secret


def test_the_sdk_sees_a_429_it_understands_and_its_retry_succeeds(
    gateway_factory: Callable[..., Gateway],
) -> None:
    upstream = Upstream()
    try:
        gw = gateway_factory(
            {
                "models": {"m": {"deployments": [{"url": upstream.url}]}},
                "limits": {"tiers": {"one_a_second": {"rps": 1, "burst": 1, "rpm": 30}}},
            }
        )
        secret = create_key(gw, "one_a_second")
        strict = openai.OpenAI(base_url=gw.url + "/v1", api_key=secret, max_retries=0)
        raw = strict.chat.completions.with_raw_response.create(model="m", messages=MESSAGES)
        assert raw.headers["x-ratelimit-limit-requests"] == "1"
        assert raw.headers["x-ratelimit-remaining-requests"] == "0"
        assert raw.headers["x-ratelimit-reset-requests"].endswith(("s", "ms"))
        assert raw.parse().choices[0].message.content == "ok"
        try:
            strict.chat.completions.create(model="m", messages=MESSAGES)
            raise AssertionError("the second request within a second must be refused")
        except openai.RateLimitError as exc:
            assert exc.status_code == 429
            assert exc.code == "rate_limit_exceeded" and exc.type == "requests"
            assert exc.response.headers["retry-after"] == "1"
            assert int(exc.response.headers["retry-after-ms"]) <= 1000
        # The SDK's own retry honours Retry-After, waits, and succeeds.
        patient = openai.OpenAI(base_url=gw.url + "/v1", api_key=secret, max_retries=3)
        started = time.monotonic()
        answers = [patient.chat.completions.create(model="m", messages=MESSAGES) for _ in range(3)]
        assert all(a.choices[0].message.content == "ok" for a in answers)
        assert time.monotonic() - started >= 1.5  # it waited for the rate, not refused
    finally:
        upstream.close()
