"""Retries and failover on the request path: what is tried again, where, and what is not."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

import orjson

from swarmgate.errors import UpstreamUnreachable
from swarmgate.pipeline.accounting import FALLBACK
from swarmgate.pipeline.accounting import _record as record_of
from swarmgate.routing.breaker import CircuitState
from swarmgate.routing.watch import health_rows
from swarmgate.types import Outcome
from swarmgate.upstream.memory import Handler, MemoryResponse, SentRequest
from tests.pipeline.fleets import Gateway

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
STREAM = {**CHAT, "stream": True}
COMPLETION = {
    "id": "c1",
    "object": "chat.completion",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "yo"}}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
}
A, B, C = "http://a.test:8000", "http://b.test:8000", "http://c.test:8000"


def _chunk(content: str) -> bytes:
    choices = [{"index": 0, "delta": {"content": content}}]
    obj = {"id": "c1", "object": "chat.completion.chunk", "choices": choices}
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _a_fails(status: int, retry_after: str | None = None) -> Handler:
    async def handler(request: SentRequest) -> MemoryResponse:
        if request.base_url == A:
            response = MemoryResponse.json({"error": {"message": "nope"}}, status=status)
            if retry_after:
                response.headers = {**response.headers, "retry-after": retry_after}
            return response
        return MemoryResponse.json(COMPLETION)

    return handler


async def test_a_5xx_is_retried_on_another_deployment_and_the_client_never_sees_it() -> None:
    gw = Gateway(_a_fails(500), A, B)
    statuses = [(await gw.post(CHAT)).status for _ in range(8)]
    assert statuses == [200] * 8
    tried_a = sum(1 for r in gw.transport.sent if r.base_url == A)
    assert tried_a  # the balancer sent some to A first (and never twice in one request)
    assert len(gw.transport.sent) == 8 + tried_a
    assert gw.sample("gateway_retries_total", model="m") == tried_a
    assert gw.in_flight() == [0, 0]


async def test_an_upstream_429_is_retried_elsewhere_and_the_last_one_passed_through() -> None:
    gw = Gateway(_a_fails(429, "7"), A, B)
    assert [(await gw.post(CHAT)).status for _ in range(2)] == [200, 200]
    # A 429 is "busy", not "broken": it does not count toward A's circuit.
    assert gw.fleet.resolve("m").members[0].health.consecutive == 0

    lone = Gateway(_a_fails(429, "7"), A)
    answer = await lone.post(CHAT)
    assert answer.status == 429 and answer.headers[b"retry-after"] == b"7"
    assert answer.json()["error"]["message"] == "nope"  # the upstream's own answer


async def test_an_upstream_4xx_other_than_429_is_passed_through_not_retried() -> None:
    gw = Gateway(_a_fails(400), A, B)
    answers = [await gw.post(CHAT) for _ in range(6)]
    assert len(gw.transport.sent) == 6  # one attempt each
    for answer, sent in zip(answers, gw.transport.sent, strict=True):
        assert answer.status == (400 if sent.base_url == A else 200)


async def test_a_timeout_before_the_first_byte_is_retried_on_another_deployment() -> None:
    hung: list[str] = []

    async def first_hangs(request: SentRequest) -> MemoryResponse:
        if not hung or request.base_url == hung[0]:  # wherever the first request went
            hung.append(request.base_url)
            await asyncio.sleep(30)
        return MemoryResponse.json(COMPLETION)

    timeouts = {"first_byte": 0.05, "idle": 0.05, "total": 0.05}
    gw = Gateway(first_hangs, A, B, deployment={"timeouts": timeouts})
    assert [(await gw.post(CHAT)).status for _ in range(2)] == [200, 200]
    name = "m@" + hung[0].removeprefix("http://")
    assert gw.sample("gateway_upstream_errors_total", deployment=name, kind="timeout") == len(hung)


async def test_a_stream_is_never_retried_after_its_first_byte() -> None:
    async def breaks(request: SentRequest) -> MemoryResponse:
        return MemoryResponse.sse(_chunk("he"), UpstreamUnreachable("reset"))

    gw = Gateway(breaks, A, B)
    answer = await gw.post(STREAM)
    assert answer.status == 200 and b'"error"' in answer.body  # the SSE error event
    assert len(gw.transport.sent) == 1


async def test_a_stream_failing_before_its_first_byte_is_retried() -> None:
    async def handler(request: SentRequest) -> MemoryResponse:
        if request.base_url == A:
            return MemoryResponse.json({"error": {"message": "overloaded"}}, status=503)
        return MemoryResponse.sse(_chunk("hi"), b"data: [DONE]\n\n")

    gw = Gateway(handler, A, B)
    answers = [await gw.post(STREAM) for _ in range(2)]
    assert [a.status for a in answers] == [200, 200]
    assert all(b"[DONE]" in a.body for a in answers)


async def test_max_attempts_is_per_model() -> None:
    async def down(request: SentRequest) -> MemoryResponse:
        raise UpstreamUnreachable("could not reach it")

    gw = Gateway(down, A, B, C, retry={"max_attempts": 2})
    answer = await gw.post(CHAT)
    assert answer.status == 502 and len(gw.transport.sent) == 2
    once = Gateway(down, A, B, C, retry={"max_attempts": 1})
    assert (await once.post(CHAT)).status == 502 and len(once.transport.sent) == 1


async def test_a_spent_retry_budget_answers_the_failure_instead_of_retrying() -> None:
    gw = Gateway(_a_fails(500), A, B, retry={"budget_percent": 0, "min_concurrent_retries": 0})
    answers = [await gw.post(CHAT) for _ in range(6)]
    assert len(gw.transport.sent) == 6  # never a second attempt
    for answer, sent in zip(answers, gw.transport.sent, strict=True):
        assert answer.status == (502 if sent.base_url == A else 200)


async def test_a_deployment_failing_its_threshold_is_cut_off_by_its_circuit() -> None:
    gw = Gateway(_a_fails(500), A, B, circuit_breaker={"threshold": 3, "open_seconds": 60})
    statuses = [(await gw.post(CHAT)).status for _ in range(20)]
    assert statuses == [200] * 20  # each failure on A was retried on B
    sent = Counter(r.base_url for r in gw.transport.sent)
    assert sent[A] == 3 and sent[B] == 20  # after three, A got nothing more
    a = gw.fleet.resolve("m").members[0]
    assert a.health.breaker.state is CircuitState.OPEN
    gw.metrics.follow_fleet(health_rows(gw.fleet))
    assert gw.sample("circuit_breaker_state", model="m", deployment="m@a.test:8000") == 1
    assert gw.sample("circuit_breaker_state", model="m", deployment="m@b.test:8000") == 0
    assert gw.sample("gateway_circuit_opens_total", model="m", deployment="m@a.test:8000") == 1


async def test_every_deployment_down_is_the_configured_fallback_recorded_as_such() -> None:
    async def down(request: SentRequest) -> MemoryResponse:
        raise UpstreamUnreachable("could not reach it")

    fallback = {"status": 503, "body": {"error": {"message": "resting"}}, "retry_after": 20}
    gw = Gateway(down, A, B, circuit_breaker={"threshold": 1}, fallback=fallback)
    assert (await gw.post(CHAT)).status == 502  # both tried, both failed: circuits open
    sent = len(gw.transport.sent)
    answer = await gw.post(CHAT)
    assert answer.status == 503 and answer.json() == {"error": {"message": "resting"}}
    assert answer.headers[b"retry-after"] == b"20"
    assert len(gw.transport.sent) == sent  # nothing sent
    assert gw.sample("gateway_fallback_responses_total", model="m") == 1


def test_the_ledger_records_a_fallback_as_such() -> None:
    from swarmgate.pipeline.exchange import Exchange
    from swarmgate.pipeline.request import ROUTES
    from tests.pipeline.fleets import USER

    route = ROUTES["/v1/chat/completions"]
    x = Exchange.start({"type": "http", "headers": [], "client": None}, route)
    x.fallback, x.status = True, 503
    assert record_of(x, USER, None, 0.0, 0.01).deployment == FALLBACK


async def test_a_request_waiting_on_a_deployment_its_probes_find_hung_is_retried() -> None:
    hung: list[str] = []

    async def first_hangs(request: SentRequest) -> MemoryResponse:
        if not hung or request.base_url == hung[0]:  # wherever the first request went
            hung.append(request.base_url)
            await asyncio.sleep(30)
        return MemoryResponse.json(COMPLETION)

    # Long bounds: only the probes' verdict can cut the wait (at the watchdog's next wake,
    # within ``idle``).
    timeouts = {"first_byte": 20, "idle": 0.05, "total": 20}
    gw = Gateway(first_hangs, A, B, deployment={"timeouts": timeouts})
    waiting = asyncio.create_task(gw.post(CHAT))
    await asyncio.sleep(0.1)
    assert not waiting.done() and hung
    members = gw.fleet.resolve("m").members
    stuck = next(m for m in members if m.deployment.url == hung[0])
    for _ in range(3):  # unhealthy_threshold
        stuck.health.probed(False)
    answer = await asyncio.wait_for(waiting, 1)
    other = next(m for m in members if m is not stuck)
    assert answer.status == 200
    assert answer.headers[b"x-swarmgate-deployment"] == other.name.encode()
    assert gw.sample("gateway_upstream_errors_total", deployment=stuck.name, kind="timeout")


async def test_unary_first_byte_bounds_a_non_streamed_wait_and_the_stream_keeps_its_own() -> None:
    async def a_hangs(request: SentRequest) -> MemoryResponse:
        if request.base_url == A:
            await asyncio.sleep(30)
        return MemoryResponse.json(COMPLETION)

    timeouts = {"first_byte": 20, "idle": 20, "total": 20, "unary_first_byte": 0.05}
    gw = Gateway(a_hangs, A, B, deployment={"timeouts": timeouts})
    answer = await asyncio.wait_for(gw.post(CHAT), 2)
    assert answer.status == 200
    d = gw.fleet.resolve("m").members[0].deployment
    assert d.unary_timeouts.first_byte == 0.05 and d.timeouts.first_byte == 20


async def test_a_failover_off_a_deployment_never_reached_is_not_charged_to_the_budget() -> None:
    async def a_down(request: SentRequest) -> MemoryResponse:
        if request.base_url == A:
            raise UpstreamUnreachable("could not reach it")
        return MemoryResponse.json(COMPLETION)

    gw = Gateway(a_down, A, B, retry={"budget_percent": 0, "min_concurrent_retries": 0})
    assert [(await gw.post(CHAT)).status for _ in range(4)] == [200] * 4


async def test_a_trial_that_ends_with_no_verdict_gives_its_slot_back() -> None:
    async def cancelled(request: SentRequest) -> MemoryResponse:
        raise asyncio.CancelledError  # neither an answer nor a failure of the deployment

    gw = Gateway(cancelled, A, circuit_breaker={"threshold": 1, "open_seconds": 0.01})
    health = gw.fleet.resolve("m").members[0].health
    health.observe(Outcome.UNREACHABLE)  # open
    await asyncio.sleep(0.02)  # half-open: one trial
    with contextlib.suppress(asyncio.CancelledError):
        await gw.post(CHAT)
    assert health.breaker.trials_out == 0 and health.admits()
