"""SSE keep-alives while a stream waits for its first chunk: opt-in per model, and their price."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson

from swarmgate.pipeline.keepalive import COMMENT
from swarmgate.upstream.memory import MemoryResponse, SentRequest
from tests.pipeline.fleets import Gateway

STREAM = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
A, B = "http://a.test:8000", "http://b.test:8000"


def _chunk(content: str) -> bytes:
    choices = [{"index": 0, "delta": {"content": content}}]
    obj = {"id": "c1", "object": "chat.completion.chunk", "choices": choices}
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _slow_stream(prefill: float) -> MemoryResponse:
    async def events() -> AsyncIterator[bytes]:
        await asyncio.sleep(prefill)  # the head came at once; the first token takes its time
        yield _chunk("hel")
        yield _chunk("lo")
        yield b"data: [DONE]\n\n"

    return MemoryResponse.sse_from(events())


def _starts(answer: object) -> int:
    return sum(1 for m in answer.messages if m["type"] == "http.response.start")  # type: ignore[attr-defined]


async def test_comments_keep_a_long_prefill_alive_then_the_stream_flows() -> None:
    async def slow(request: SentRequest) -> MemoryResponse:
        return _slow_stream(0.3)

    gw = Gateway(slow, A, stream_keepalive=0.05)
    answer = await gw.post(STREAM)
    assert answer.status == 200 and _starts(answer) == 1  # the head went out once
    body = answer.body
    assert body.startswith(COMMENT) and body.count(COMMENT) >= 3
    assert b"hel" in body and body.rstrip().endswith(b"data: [DONE]")
    assert COMMENT not in body[body.index(b"hel") :]  # none once the stream flows
    assert gw.in_flight() == [0]


async def test_they_are_off_by_default() -> None:
    async def slow(request: SentRequest) -> MemoryResponse:
        return _slow_stream(0.2)

    answer = await Gateway(slow, A).post(STREAM)
    assert answer.status == 200 and COMMENT not in answer.body


async def test_a_stream_that_starts_in_time_sends_none_and_fails_over_as_before() -> None:
    async def a_fails(request: SentRequest) -> MemoryResponse:
        if request.base_url == A:
            return MemoryResponse.json({"error": {"message": "overloaded"}}, status=503)
        return _slow_stream(0.0)

    gw = Gateway(a_fails, A, B, stream_keepalive=5)
    for _ in range(4):
        answer = await gw.post(STREAM)
        assert answer.status == 200 and COMMENT not in answer.body
        assert answer.body.rstrip().endswith(b"data: [DONE]")


async def test_once_a_keepalive_went_out_a_failure_is_an_error_event_and_never_retried() -> None:
    async def late_503(request: SentRequest) -> MemoryResponse:
        await asyncio.sleep(0.2)  # no head for a while, then an error
        return MemoryResponse.json({"error": {"message": "out of memory"}}, status=503)

    gw = Gateway(late_503, A, B, stream_keepalive=0.05)
    answer = await gw.post(STREAM)
    assert answer.status == 200 and answer.body.startswith(COMMENT)
    last = answer.body.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
    error = orjson.loads(last.removeprefix(b"data: "))["error"]
    assert "HTTP 503" in error["message"] and "out of memory" in error["message"]
    assert len(gw.transport.sent) == 1  # the price: no second deployment tried
    tried = "m@" + gw.transport.sent[0].base_url.removeprefix("http://")
    assert gw.sample("gateway_upstream_errors_total", deployment=tried, kind="http_503") == 1


async def test_a_timeout_after_a_keepalive_is_an_error_event_too() -> None:
    async def hangs(request: SentRequest) -> MemoryResponse:
        return _slow_stream(30)

    timeouts = {"first_byte": 0.2, "idle": 0.2, "total": 5}
    gw = Gateway(hangs, A, stream_keepalive=0.05, deployment={"timeouts": timeouts})
    answer = await asyncio.wait_for(gw.post(STREAM), 3)
    assert answer.status == 200 and answer.body.startswith(COMMENT)
    assert b"upstream_timeout" in answer.body and gw.in_flight() == [0]
