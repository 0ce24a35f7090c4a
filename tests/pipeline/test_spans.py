"""Tracing on the request path: sampling, the spans of a request, trace context in and out.

The spans go to the SDK's in-memory exporter through its simple (synchronous) processor, so
they are there as soon as the request has finished.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from swarmgate.config import Tracing as TracingConfig
from swarmgate.observability.tracecontext import parse_traceparent
from swarmgate.observability.tracing import Tracing
from swarmgate.upstream.memory import MemoryResponse, SentRequest
from tests.pipeline.fleets import Gateway

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
COMPLETION = {
    "id": "c1",
    "object": "chat.completion",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "yo"}}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
}
A, B = "http://a.test:8000", "http://b.test:8000"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


def _traced(
    handler: Any, *urls: str, sampling: float = 1.0, **model: Any
) -> tuple[Gateway, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing = Tracing(
        TracingConfig(enabled=True, sampling=sampling), "gw", SimpleSpanProcessor(exporter)
    )
    return Gateway(handler, *urls, accounting={"tracing": tracing}, **model), exporter


async def ok(request: SentRequest) -> MemoryResponse:
    return MemoryResponse.json(COMPLETION)


def _by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {s.name: s for s in spans}


async def test_a_sampled_request_has_a_span_per_stage_under_the_clients_span() -> None:
    gw, exporter = _traced(ok, A)
    header = f"00-{TRACE}-{PARENT}-01"
    answer = await gw.post(
        CHAT, headers=[(b"traceparent", header.encode()), (b"tracestate", b"vendor=x")]
    )
    assert answer.status == 200
    spans = _by_name(exporter.get_finished_spans())
    assert set(spans) == {
        "POST /v1/chat/completions",
        "authenticate",
        "admit",
        "route",
        "upstream m@a.test:8000",
        "account",
    }
    root = spans["POST /v1/chat/completions"]
    assert root.kind is SpanKind.SERVER
    assert root.context is not None and root.parent is not None
    assert f"{root.context.trace_id:032x}" == TRACE
    assert f"{root.parent.span_id:016x}" == PARENT and root.parent.is_remote
    assert root.attributes is not None
    assert root.attributes["swarmgate.request_id"] == "rid-1"
    assert root.attributes["http.response.status_code"] == 200
    assert root.attributes["gen_ai.usage.output_tokens"] == 2
    assert root.attributes["swarmgate.deployment"] == "m@a.test:8000"
    assert root.context.trace_state.get("vendor") == "x"
    for name, span in spans.items():
        assert span.context is not None and span.context.trace_id == root.context.trace_id
        if name != root.name:
            assert span.parent is not None and span.parent.span_id == root.context.span_id
        assert span.start_time is not None and span.end_time is not None
        assert span.start_time <= span.end_time
    # The stages follow each other in order, within the request.
    order = ["authenticate", "admit", "route", "upstream m@a.test:8000"]
    starts = [spans[n].start_time for n in order]
    assert starts == sorted(starts)
    assert root.start_time == spans["authenticate"].start_time
    # The deployment was told the upstream call's span as its parent, in the client's trace.
    upstream = spans["upstream m@a.test:8000"]
    sent = gw.transport.sent[0].headers
    assert upstream.context is not None and upstream.kind is SpanKind.CLIENT
    assert sent["traceparent"] == f"00-{TRACE}-{upstream.context.span_id:016x}-01"
    assert sent["tracestate"] == "vendor=x"


async def test_an_unsampled_request_builds_nothing_and_passes_the_clients_traceparent_on() -> None:
    gw, exporter = _traced(ok, A)
    header = f"00-{TRACE}-{PARENT}-00"  # the client did not sample it: neither do we
    answer = await gw.post(CHAT, headers=[(b"traceparent", header.encode())])
    assert answer.status == 200
    assert exporter.get_finished_spans() == ()
    assert gw.transport.sent[0].headers["traceparent"] == header


async def test_sampling_draws_the_configured_share_of_requests_without_a_traceparent() -> None:
    gw, exporter = _traced(ok, A, sampling=0.1)
    for _ in range(400):
        await gw.post(CHAT)
    traced = {s.context.trace_id for s in exporter.get_finished_spans() if s.context}
    # Binomial(400, 0.1): 40 expected; outside 15..70 with a probability below 1e-6.
    assert 15 <= len(traced) <= 70
    with_header = [s for s in gw.transport.sent if "traceparent" in s.headers]
    assert len(with_header) == len(traced)  # only sampled requests carry one of ours


async def test_a_stream_records_its_first_token_and_a_retry_has_a_span_per_attempt() -> None:
    def chunk(content: str) -> bytes:
        obj = {
            "id": "c",
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": content}}],
        }
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    async def a_fails(request: SentRequest) -> MemoryResponse:
        if request.base_url == A:
            return MemoryResponse.json({"error": {"message": "overloaded"}}, status=503)
        return MemoryResponse.sse(chunk("he"), chunk("llo"), b"data: [DONE]\n\n")

    gw, exporter = _traced(a_fails, A, B)
    for _ in range(10):  # until the balancer has tried A first once
        exporter.clear()
        gw.transport.sent.clear()
        answer = await gw.post({**CHAT, "stream": True})
        assert answer.status == 200
        if len(gw.transport.sent) == 2:
            break
    spans = exporter.get_finished_spans()
    calls = [s for s in spans if s.name.startswith("upstream ")]
    assert [s.name for s in calls] == ["upstream m@a.test:8000", "upstream m@b.test:8000"]
    failed, served = calls
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes is not None and failed.attributes["http.response.status_code"] == 503
    assert served.attributes is not None and served.attributes["swarmgate.ttft_ms"] > 0
    assert [e.name for e in served.events] == ["first token"]
    # Each attempt was sent its own span as the deployment's parent.
    sent = [parse_traceparent(r.headers["traceparent"]) for r in gw.transport.sent]
    assert [p[1] for p in sent if p] == [c.context.span_id for c in calls if c.context]


async def test_a_refused_request_ends_in_the_stage_that_refused_it_with_its_error() -> None:
    gw, exporter = _traced(ok, A)
    answer = await gw.post(
        {**CHAT, "model": "nope"}, headers=[(b"traceparent", f"00-{TRACE}-{PARENT}-01".encode())]
    )
    assert answer.status == 404
    spans = _by_name(exporter.get_finished_spans())
    assert "admit" not in spans and "route" not in spans
    assert spans["parse"].status.status_code is StatusCode.ERROR
    # The error body names the trace beside the request id.
    error = answer.json()["error"]
    assert error["request_id"] == "rid-1" and error["trace_id"] == TRACE


@pytest.mark.parametrize("traceparent", [None, f"00-{TRACE}-{PARENT}-00"])
async def test_an_error_body_carries_a_trace_id_only_when_the_request_has_a_trace(
    traceparent: str | None,
) -> None:
    gw = Gateway(ok, A)  # tracing off: a client's trace is still named
    headers = [(b"traceparent", traceparent.encode())] if traceparent else []
    error = (await gw.post({**CHAT, "model": "nope"}, headers=headers)).json()["error"]
    assert error["request_id"] == "rid-1"
    assert error.get("trace_id") == (TRACE if traceparent else None)


async def test_a_failed_requests_log_line_names_its_request_and_its_trace(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gw = Gateway(ok, A)
    header = f"00-{TRACE}-{PARENT}-00"
    with caplog.at_level(logging.INFO, logger="swarmgate.requests"):
        await gw.post({**CHAT, "model": "nope"}, headers=[(b"traceparent", header.encode())])
    [record] = [r for r in caplog.records if r.name == "swarmgate.requests"]
    assert f"request_id=rid-1 trace_id={TRACE} " in record.getMessage()
    assert (record.request_id, record.trace_id, record.status) == ("rid-1", TRACE, 404)  # type: ignore[attr-defined]
