"""The access log's line of a request: what it says, from the request's own record."""

from __future__ import annotations

import io
from typing import Any

import orjson
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from swarmgate.config import Tracing as TracingConfig
from swarmgate.observability.access import AccessLog
from swarmgate.observability.tracing import Tracing
from swarmgate.pipeline import access
from swarmgate.upstream.memory import MemoryResponse, SentRequest
from tests.pipeline.fleets import Gateway

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
COMPLETION = {
    "id": "c1",
    "object": "chat.completion",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "yo"}}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
}
A = "http://a.test:8000"
LIMITS = {"tiers": {"default": {"rpm": 1}}}


async def ok(request: SentRequest) -> MemoryResponse:
    return MemoryResponse.json(COMPLETION)


def _lines(log: AccessLog[access.Entry], out: io.BytesIO) -> list[dict[str, Any]]:
    log.flush()
    return [orjson.loads(line) for line in out.getvalue().splitlines()]


async def test_a_line_per_request_with_ids_model_tokens_and_the_limits_decision() -> None:
    out = io.BytesIO()
    log = AccessLog(access.render, stream=out)
    tracing = Tracing(
        TracingConfig(enabled=True, sampling=1.0), "gw", SimpleSpanProcessor(InMemorySpanExporter())
    )
    gw = Gateway(ok, A, limits=LIMITS, accounting={"access": log, "tracing": tracing})
    key = [(b"authorization", b"Tier default:key-1")]
    assert (await gw.post(CHAT, headers=key)).status == 200
    refused = await gw.post(CHAT, headers=key)  # one request a minute: the second is refused
    assert refused.status == 429
    served, limited = _lines(log, out)
    assert served["request_id"] == "rid-1" and len(served["trace_id"]) == 32
    assert served["trace_id"] == gw.transport.sent[0].headers["traceparent"][3:35]
    assert served["key_id"] == "key-1" and served["tier"] == "default"
    assert (served["model"], served["deployment"]) == ("m", "m@a.test:8000")
    assert (served["status"], served["outcome"], served["limit"]) == (200, "ok", "admitted")
    assert (served["prompt_tokens"], served["completion_tokens"]) == (3, 2)
    assert served["latency_ms"] > 0 and served["path"] == "/v1/chat/completions"
    assert (limited["status"], limited["limit"], limited["deployment"]) == (429, "refused", None)
    assert limited["trace_id"] == refused.json()["error"]["trace_id"]
    assert "rate limit" in limited["error"].lower()


async def test_without_tracing_a_line_names_the_clients_trace_or_none() -> None:
    out = io.BytesIO()
    log = AccessLog(access.render, stream=out)
    gw = Gateway(ok, A, accounting={"access": log})
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    await gw.post(CHAT, headers=[(b"traceparent", f"00-{trace}-00f067aa0ba902b7-00".encode())])
    await gw.post(CHAT)
    with_trace, without = _lines(log, out)
    assert with_trace["trace_id"] == trace and without["trace_id"] is None
    assert without["limit"] is None  # no limits configured
