"""Admission on the real request path (in-process counters, in-memory transport): tiers,
overrides and scopes, 429s in OpenAI's form, rate-limit headers, reservations settled."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from swarmgate.auth.roles import default_scopes
from swarmgate.limits.admission import Admission, reservation
from swarmgate.limits.grant import duration_text, reset_value
from swarmgate.limits.tiers import Limits
from swarmgate.observability.metrics import Metrics
from swarmgate.pipeline.request import ROUTES, parse
from swarmgate.store.counters import MemoryCounters
from swarmgate.types import Principal, Role
from swarmgate.upstream.memory import MemoryResponse, SentRequest
from tests.pipeline.fleets import Gateway

A = "http://a.test:8000"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}


def completion(prompt: int = 3, output: int = 2) -> dict[str, Any]:
    return {
        "id": "c1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "yo"}}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": output},
    }


async def ok(request: SentRequest) -> MemoryResponse:
    return MemoryResponse.json(completion())


def key(tier: str = "free", key_id: str = "k1", **limits: Any) -> Principal:
    return Principal(
        "owner-a",
        Role.USER,
        default_scopes(Role.USER),
        tier=tier,
        key_id=key_id,
        limits=tuple(sorted(limits.items())) or None,
    )


def gateway(
    limits: dict[str, Any], principal: Principal, handler: Any = ok, **kw: Any
) -> tuple[Gateway, Metrics]:
    metrics = Metrics()
    admission = Admission(Limits.model_validate(limits), MemoryCounters(), metrics)
    return Gateway(handler, A, admission=admission, principal=principal, **kw), metrics


async def test_the_free_tier_admits_ten_a_minute_then_429s_in_openais_form() -> None:
    gw, metrics = gateway({}, key("free"))
    answers = [await gw.post(CHAT) for _ in range(11)]
    assert [a.status for a in answers] == [200] * 10 + [429]
    first = answers[0].headers
    assert first[b"x-ratelimit-limit-requests"] == b"10"
    assert first[b"x-ratelimit-remaining-requests"] == b"9"
    assert first[b"x-ratelimit-reset-requests"].endswith(b"s")
    refused = answers[-1]
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
    assert "rpm" in error["message"]
    assert 55 <= int(refused.headers[b"retry-after"]) <= 60
    assert int(refused.headers[b"retry-after-ms"]) > 55_000
    metrics.flush()
    sample = metrics.registry.get_sample_value
    labels = {"tier": "free", "limit": "rpm", "scope": "key"}
    assert sample("rate_limit_exceeded_total", labels) == 1
    assert sample("gateway_admissions_total", {"tier": "free", "decision": "admitted"}) == 10


async def test_the_default_tier_is_unlimited_and_costs_no_await() -> None:
    gw, _ = gateway({}, key("default"))
    answers = [await gw.post(CHAT) for _ in range(30)]
    assert {a.status for a in answers} == {200}
    assert b"x-ratelimit-limit-requests" not in answers[0].headers
    assert Admission(Limits(enabled=False)).active is False


async def test_a_keys_override_wins_over_its_tier() -> None:
    gw, _ = gateway({}, key("free", rpm=2))
    assert [(await gw.post(CHAT)).status for _ in range(3)] == [200, 200, 429]


async def test_concurrency_is_a_lease_released_when_the_request_ends() -> None:
    gate = asyncio.Event()

    async def slow(request: SentRequest) -> MemoryResponse:
        await gate.wait()
        return MemoryResponse.json(completion())

    gw, _ = gateway({"tiers": {"c": {"concurrent": 2}}}, key("c"), slow)
    running = [asyncio.ensure_future(gw.post(CHAT)) for _ in range(2)]
    await asyncio.sleep(0.01)
    third = await gw.post(CHAT)
    assert third.status == 429 and third.headers[b"retry-after"] == b"1"
    assert "in flight" in third.json()["error"]["message"]
    gate.set()
    assert [(await r).status for r in running] == [200, 200]
    assert (await gw.post(CHAT)).status == 200


async def test_tokens_are_reserved_then_settled_to_usage() -> None:
    # A tpm of 100: each request reserves its prompt estimate plus max_tokens (10) and is
    # settled to its usage (5), so more fit than the reservations alone would allow: a
    # request is admitted while the settled tokens plus its reservation fit.
    reserved = len(orjson.dumps(CHAT)) // 4 + 1 + 10
    fit = (100 - reserved) // 5 + 1
    assert fit > 100 // reserved
    gw, metrics = gateway({"tiers": {"t": {"tpm": 100}}}, key("t"))
    statuses = [(await gw.post(CHAT)).status for _ in range(fit + 1)]
    assert statuses == [200] * fit + [429]
    refused = await gw.post(CHAT)
    assert refused.status == 429
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("tokens", "rate_limit_exceeded")
    # (settled tokens are counted by the accounting, with the gateway's metrics)
    assert gw.sample("gateway_tokens_settled_total", tier="t") == 5 * fit
    metrics.flush()
    reserved_total = metrics.registry.get_sample_value(
        "gateway_tokens_reserved_total", {"tier": "t"}
    )
    assert reserved_total == reserved * fit


async def test_a_request_larger_than_the_token_limit_is_refused_before_any_model() -> None:
    calls = []

    async def counted(request: SentRequest) -> MemoryResponse:
        calls.append(request)
        return MemoryResponse.json(completion())

    gw, _ = gateway({"tiers": {"t": {"tpm": 50}}}, key("t"), counted)
    answer = await gw.post({**CHAT, "max_tokens": 100})
    assert answer.status == 429 and not calls
    assert answer.headers[b"x-should-retry"] == b"false"
    assert "too large" in answer.json()["error"]["message"]


async def test_a_failed_request_gives_its_tokens_back() -> None:
    async def broken(request: SentRequest) -> MemoryResponse:
        return MemoryResponse.json({"error": {"message": "boom"}}, status=500)

    gw, _ = gateway({"tiers": {"t": {"tpm": 100}}}, key("t"), broken)
    statuses = [(await gw.post(CHAT)).status for _ in range(10)]
    # Each reserved ~17 tokens and used none: never a 429. (After five failures the
    # deployment's circuit opens: the model's fallback response, 503.)
    assert statuses == [502] * 5 + [503] * 5


async def test_model_endpoint_owner_and_global_scopes() -> None:
    limits = {"models": {"m": {"rpm": 3}}, "owner": {"rpm": 5}, "global": {"rpm": 7}}
    gw, _ = gateway(limits, key("default", "k1"))
    other, _ = gateway(limits, key("default", "k2"))
    other.inference.admission = gw.inference.admission  # one gateway, two keys
    assert [(await gw.post(CHAT)).status for _ in range(4)] == [200, 200, 200, 429]
    answer = await other.post(CHAT)
    assert answer.status == 429 and "the model" in answer.json()["error"]["message"]
    endpoints, _ = gateway({"endpoints": {"chat": {"rps": 1, "burst": 1}}}, key("default"))
    assert [(await endpoints.post(CHAT)).status for _ in range(2)] == [200, 429]


async def test_anonymous_callers_are_limited_per_client_ip() -> None:
    guest = Principal("anonymous", Role.GUEST, default_scopes(Role.GUEST), via="anonymous")
    gw, _ = gateway({"anonymous": {"rpm": 2}}, guest)
    assert [(await gw.post(CHAT)).status for _ in range(3)] == [200, 200, 429]


def test_the_reservation_is_the_prompt_estimate_plus_the_answers_bound() -> None:
    body = orjson.dumps(CHAT)
    request = parse(ROUTES["/v1/chat/completions"], body)
    assert reservation(request, "chat", "total", 1024) == len(body) // 4 + 1 + 10
    assert reservation(request, "chat", "output", 1024) == 10
    request.payload.pop("max_tokens")
    assert reservation(request, "chat", "output", 1024) == 1024
    assert reservation(request, "images", "total", 1024) == 0


def test_reset_times_read_as_openais() -> None:
    assert [duration_text(s) for s in (0.02, 1.5, 59, 360, 7384)] == [
        "20ms",
        "1.5s",
        "59s",
        "6m0s",
        "2h3m4s",
    ]
    # As header bytes, rounded up to the millisecond.
    assert [reset_value(s) for s in (0.0191, 59.9991, 59.9991, 7383.2)] == [
        b"20ms",
        b"1m0s",
        b"1m0s",
        b"2h3m4s",
    ]


def _chunk(content: str | None = None, usage: dict[str, int] | None = None) -> bytes:
    choices = [] if content is None else [{"index": 0, "delta": {"content": content}}]
    obj = {"id": "c1", "object": "chat.completion.chunk", "choices": choices, "usage": usage}
    return b"data: " + orjson.dumps(obj) + b"\n\n"


async def test_a_stream_is_settled_to_its_usage_chunk_and_carries_the_headers() -> None:
    async def streamed(request: SentRequest) -> MemoryResponse:
        return MemoryResponse.sse(
            _chunk("yo"),
            _chunk(usage={"prompt_tokens": 4, "completion_tokens": 3}),
            b"data: [DONE]\n\n",
        )

    gw, _ = gateway({"tiers": {"t": {"tpm": 1000, "rpm": 50}}}, key("t"), streamed)
    answer = await gw.post({**CHAT, "stream": True})
    assert answer.status == 200
    assert answer.headers[b"x-ratelimit-limit-tokens"] == b"1000"
    assert answer.headers[b"x-ratelimit-remaining-requests"] == b"49"
    assert gw.sample("gateway_tokens_settled_total", tier="t") == 7


async def test_a_jwt_principal_is_limited_by_its_tier_claim_per_subject() -> None:
    def token(subject: str, tier: str) -> Principal:
        return Principal(subject, Role.USER, default_scopes(Role.USER), tier=tier, via="jwt")

    limits = Limits.model_validate({"tiers": {"gold": {"rpm": 2}}})
    admission = Admission(limits, MemoryCounters(), Metrics())
    alice = Gateway(ok, A, admission=admission, principal=token("alice", "gold"))
    bob = Gateway(ok, A, admission=admission, principal=token("bob", "gold"))
    unknown = Gateway(ok, A, admission=admission, principal=token("carol", "no-such-tier"))
    assert [(await alice.post(CHAT)).status for _ in range(3)] == [200, 200, 429]
    assert (await bob.post(CHAT)).status == 200  # counted per subject
    assert {(await unknown.post(CHAT)).status for _ in range(5)} == {200}  # default: unlimited


async def test_a_stream_cut_before_its_usage_keeps_its_reservation() -> None:
    first_sent = asyncio.Event()

    async def slow_events() -> Any:
        yield _chunk("a")
        first_sent.set()
        await asyncio.sleep(30)
        yield b"data: [DONE]\n\n"

    async def slow(request: SentRequest) -> MemoryResponse:
        return MemoryResponse.sse_from(slow_events())

    async def leaves() -> dict[str, Any]:
        await first_sent.wait()
        return {"type": "http.disconnect"}

    gw, _ = gateway({"tiers": {"t": {"tpm": 1000}}}, key("t"), slow)
    body = {**CHAT, "stream": True}
    await asyncio.wait_for(gw.post(body, receive=leaves), 5)
    reserved = len(orjson.dumps(body)) // 4 + 1 + 10
    assert gw.sample("gateway_tokens_settled_total", tier="t") == reserved
