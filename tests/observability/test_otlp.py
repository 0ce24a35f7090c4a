"""Spans reach real OTLP receivers: a ``swarmgate serve`` process exporting over OTLP/HTTP to
an HTTP server in the test, and the gRPC exporter to an in-process gRPC collector service.

The receivers decode the protobuf requests with ``opentelemetry-proto``, as a collector does.
"""

from __future__ import annotations

import gzip
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from swarmgate.config import Tracing as TracingConfig
from swarmgate.observability.tracecontext import Trace
from swarmgate.observability.tracing import SpanBuilder, Tracing
from tests.plugins.processes import Gateway, Sim, free_port

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


class Received:
    def __init__(self) -> None:
        self.spans: list[tuple[str, Span]] = []  # (service.name, span)
        self.paths: list[str] = []
        self.lock = threading.Lock()

    def add(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        with self.lock:
            for resource_spans in request.resource_spans:
                service = next(
                    a.value.string_value
                    for a in resource_spans.resource.attributes
                    if a.key == "service.name"
                )
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend((service, s) for s in scope_spans.spans)

    def wait(self, count: int, timeout: float = 15) -> list[tuple[str, Span]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.spans) >= count:
                    return list(self.spans)
            time.sleep(0.05)
        raise AssertionError(f"{len(self.spans)} spans received, {count} expected")


@pytest.fixture
def otlp_http() -> Iterator[tuple[str, Received]]:
    received = Received()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            if self.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            request = trace_service_pb2.ExportTraceServiceRequest()
            request.ParseFromString(body)
            received.paths.append(self.path)
            received.add(request)
            reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1/traces", received
    server.shutdown()
    server.server_close()


def _until(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _post(url: str, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, str]:
    request = urllib.request.Request(url, orjson.dumps(body), headers, method="POST")
    request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_a_served_gateway_exports_a_clients_trace_over_otlp_http(
    sim_factory: Callable[..., Sim],
    gateway_factory: Callable[..., Gateway],
    otlp_http: tuple[str, Received],
    tmp_path: Path,
) -> None:
    endpoint, received = otlp_http
    sim = sim_factory({"m": {"ttft_ms": 5, "tokens_per_second": 2000}})
    access_path = tmp_path / "access.log"
    gw = gateway_factory(
        {
            "models": {"m": {"deployments": [{"url": sim.url}]}},
            "tracing": {
                "enabled": True,
                "sampling": 0.0,
                "endpoint": endpoint,
                "export_interval": 0.1,
                "service_name": "gw-under-test",
            },
            "logging": {
                "format": "json",
                "access": {"enabled": True, "path": str(access_path), "flush_interval": 0.05},
            },
        }
    )
    headers = {
        "authorization": f"Bearer {gw.admin_key}",
        "traceparent": f"00-{TRACE}-{PARENT}-01",  # sampled by the client: traced at ratio 0
        "x-request-id": "req-e2e-1",
    }
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "max_tokens": 4,
    }
    status, text = _post(gw.url + "/v1/chat/completions", body, headers)
    assert status == 200 and "[DONE]" in text
    spans = received.wait(6)
    assert received.paths[0] == "/v1/traces"
    assert {service for service, _ in spans} == {"gw-under-test"}
    by_name = {s.name: s for _, s in spans}
    assert {
        "POST /v1/chat/completions",
        "authenticate",
        "admit",
        "route",
        "account",
    } <= set(by_name)
    root = by_name["POST /v1/chat/completions"]
    assert root.trace_id.hex() == TRACE and root.parent_span_id.hex() == PARENT
    assert root.kind == Span.SPAN_KIND_SERVER
    upstream = next(s for _, s in spans if s.name.startswith("upstream "))
    assert upstream.parent_span_id == root.span_id and upstream.kind == Span.SPAN_KIND_CLIENT
    attributes = {a.key: a.value for a in upstream.attributes}
    assert attributes["swarmgate.ttft_ms"].double_value >= 5  # the sim's time to first token
    assert [e.name for e in upstream.events] == ["first token"]
    root_attributes = {a.key: a.value for a in root.attributes}
    assert root_attributes["swarmgate.request_id"].string_value == "req-e2e-1"
    # The access log names the request and its trace together, and the key by its id only.
    _until(lambda: access_path.exists() and bool(access_path.read_text()))
    line = orjson.loads(access_path.read_text().splitlines()[0])
    assert (line["request_id"], line["trace_id"], line["status"]) == ("req-e2e-1", TRACE, 200)
    assert line["model"] == "m" and line["completion_tokens"] == 4
    assert gw.admin_key not in access_path.read_text() and gw.admin_key not in gw.output()
    # An error's body carries both ids; its log line (JSON) too.
    status, text = _post(gw.url + "/v1/chat/completions", {**body, "model": "nope"}, headers)
    assert status == 404
    error = orjson.loads(text)["error"]
    assert error["trace_id"] == TRACE and error["request_id"] == "req-e2e-1"
    _until(lambda: '"status":404' in gw.output())
    logged = next(orjson.loads(x) for x in gw.output().splitlines() if '"status":404' in x)
    assert (logged["request_id"], logged["trace_id"]) == ("req-e2e-1", TRACE)


def test_the_grpc_exporter_delivers_spans_to_a_collector_service() -> None:
    received = Received()

    class Collector(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:
            received.add(request)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Collector(), server)  # type: ignore[no-untyped-call]
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    try:
        config = TracingConfig(enabled=True, protocol="grpc", endpoint=f"http://127.0.0.1:{port}")
        tracing = Tracing(config, "gw-grpc")
        trace = Trace(int(TRACE, 16))
        builder = SpanBuilder(tracing, trace)
        now = time.perf_counter()
        builder.span("POST /v1/chat/completions", trace.span_id, 0, now - 0.01, now, {"a": 1})
        tracing.export(builder.spans)
        tracing.close()  # flushes the batch
        [(service, span)] = received.wait(1)
        assert service == "gw-grpc" and span.trace_id.hex() == TRACE
        assert span.end_time_unix_nano - span.start_time_unix_nano == pytest.approx(1e7, rel=0.01)
    finally:
        server.stop(0)
