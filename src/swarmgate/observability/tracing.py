"""OpenTelemetry tracing of the inference requests: spans out over OTLP (HTTP or gRPC).

The request path pays for a trace only when one is sampled. The decision is made once, as a
request arrives (``tracecontext.Sampler``): the client's ``traceparent`` decides when it sent
one (its sampled flag), else a random draw against the configured ratio. An unsampled request
carries no ``Trace`` (``None``: one attribute test on the path) and its client's
``traceparent``, if any, goes on to the deployment unchanged, as any other header does.

A sampled request's spans are not opened and closed as it runs (an SDK span costs ~14 µs,
DESIGN.md). They are built after it has finished, in ``Accounting.finish``, from the times the
request recorded anyway (``pipeline/spans.py``), as finished ``ReadableSpan``s handed to the
SDK's batch processor, whose thread encodes and exports them. The only span identity needed
while the request runs, the upstream call's (for the ``traceparent`` sent to the deployment),
is drawn then and kept on the ``Trace``.

The SDK and the OTLP exporters are the ``tracing`` extra: this module is imported only when
tracing is on.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import AttributeValue

from swarmgate.observability.tracecontext import Sampler, Trace

if TYPE_CHECKING:
    from swarmgate.config import Tracing as TracingConfig

SAMPLED = TraceFlags(TraceFlags.SAMPLED)
OK = Status()


class Tracing:
    """The sampler and the exporter, built once in ``create_app``; ``close`` flushes."""

    def __init__(
        self, config: TracingConfig, service: str, processor: SpanProcessor | None = None
    ) -> None:
        self.sampler = Sampler(config.sampling, config.parent_based)
        self.processor = processor or _batch_processor(config)
        self.resource = _Resource(Resource.create({"service.name": config.service_name or service}))
        self.scope = InstrumentationScope("swarmgate")

    def export(self, spans: Sequence[ReadableSpan]) -> None:
        on_end = self.processor.on_end
        for span in spans:
            on_end(span)

    def close(self) -> None:
        self.processor.shutdown()  # exports what is queued first


class SpanBuilder:
    """The finished spans of one trace, from perf_counter times (the offset to the wall clock
    taken once per trace)."""

    def __init__(self, tracing: Tracing, trace: Trace) -> None:
        self.tracing = tracing
        self.trace = trace
        self.state = TraceState.from_header([trace.state]) if trace.state else None
        self.offset = time.time_ns() - time.perf_counter_ns()
        self.spans: list[ReadableSpan] = []
        self._parents: dict[int, SpanContext] = {}  # by span id: one context for the siblings

    def ns(self, t: float) -> int:
        return self.offset + int(t * 1e9)

    def span(
        self,
        name: str,
        span_id: int,
        parent_id: int,
        start: float,
        end: float,
        attributes: dict[str, AttributeValue | None],
        *,
        kind: SpanKind = SpanKind.INTERNAL,
        error: str | None = None,
        events: Sequence[tuple[str, float]] = (),
    ) -> None:
        trace = self.trace
        context = SpanContext(trace.trace_id, span_id, False, SAMPLED, self.state)
        parent = self._parents.get(parent_id) if parent_id else None
        if parent is None and parent_id:  # the client's span is remote; our own spans are not
            remote = parent_id == trace.parent_id
            parent = SpanContext(trace.trace_id, parent_id, remote, SAMPLED, self.state)
            self._parents[parent_id] = parent
        self.spans.append(
            ReadableSpan(
                name,
                context=context,
                parent=parent,
                resource=self.tracing.resource,
                attributes={k: v for k, v in attributes.items() if v is not None},
                events=[Event(n, timestamp=self.ns(t)) for n, t in events],
                kind=kind,
                status=OK if error is None else Status(StatusCode.ERROR, error),
                start_time=self.ns(start),
                end_time=self.ns(max(end, start)),
                instrumentation_scope=self.tracing.scope,
            )
        )


class _Resource(Resource):
    """The gateway's resource, hashed once: the OTLP encoder groups spans by resource, and
    the SDK's ``Resource.__hash__`` JSON-encodes the attributes on every call (~10 µs a
    span, measured here). Ours never changes after it is built."""

    def __init__(self, resource: Resource) -> None:
        super().__init__(dict(resource.attributes), resource.schema_url)
        self._hash = super().__hash__()

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return other is self or super().__eq__(other)


def _batch_processor(config: TracingConfig) -> SpanProcessor:
    exporter: SpanExporter
    if config.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        exporter = GrpcExporter(
            endpoint=config.target,
            insecure=config.insecure,
            headers=dict(config.headers) or None,
            timeout=config.timeout,
        )
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(
            endpoint=config.target, headers=dict(config.headers) or None, timeout=config.timeout
        )
    return BatchSpanProcessor(
        exporter,
        max_queue_size=config.max_queue,
        schedule_delay_millis=config.export_interval * 1000,
        max_export_batch_size=min(config.max_batch, config.max_queue),
    )
