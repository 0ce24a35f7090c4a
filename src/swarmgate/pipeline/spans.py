"""A sampled request's spans, built from its ``Exchange`` once it has finished.

The request span (a server span, the child of the client's when it sent a ``traceparent``)
holds one span per stage: authenticate, admit, route, one upstream call per attempt (a client
span, whose id went to the deployment in its ``traceparent``; the first token an event on it,
its time to first token an attribute) and account. A stage the request never reached has no
span; the one it was refused in ends when the request did, with its error.
"""

from __future__ import annotations

import time

from opentelemetry.trace import SpanKind

from swarmgate.observability.tracecontext import Trace, new_span_id
from swarmgate.observability.tracing import SpanBuilder, Tracing
from swarmgate.pipeline.exchange import Attempt, Exchange


def record(tracing: Tracing, x: Exchange, trace: Trace, ended: float) -> None:
    """Export ``x``'s spans; ``ended``: when it was answered (accounting began).

    Every span and attribute costs the exporter's thread ~15 and ~3 µs to encode (measured
    here: bench/README.md), so each fact is said once, on the span it belongs to, and the
    parse of the body is the gap between authenticate and admit rather than a span of its own.
    """
    b = SpanBuilder(tracing, trace)
    root = trace.span_id
    error = x.error if x.status >= 400 else None  # for the stage that refused it
    # Each stage from where the previous one left off (admit: from the body parsed); the one
    # that refused the request is the first whose end was not recorded, and ends with it.
    stages = [
        ("authenticate", x.started, trace.authenticated),
        ("admit", trace.parsed, trace.admitted),
        ("route", trace.admitted, x.attempts[0].started if x.attempts else 0.0),
    ]
    for name, start, end in stages:
        if not start:  # refused between authenticate and admit: only then a span of its own
            b.span("parse", new_span_id(), root, trace.authenticated, ended, {}, error=error)
            break
        if not end:
            b.span(name, new_span_id(), root, start, ended, {}, error=error)
            break
        b.span(name, new_span_id(), root, start, end, {})
    for i, attempt in enumerate(x.attempts):
        ids = trace.upstream_ids
        span_id = ids[i] if i < len(ids) else new_span_id()
        _upstream(b, attempt, span_id, root, ended)
    principal = x.principal
    usage = x.usage
    b.span(
        f"POST {x.route.client_path}",
        root,
        trace.parent_id,
        x.started,
        ended,
        {
            "http.response.status_code": x.status,
            "swarmgate.request_id": x.head.request_id,
            "swarmgate.key_id": principal.key_id if principal is not None else None,
            "gen_ai.request.model": x.model if x.pool is not None else None,
            "swarmgate.deployment": x.deployment if x.attempts else None,
            "gen_ai.usage.input_tokens": usage.prompt_tokens if usage is not None else None,
            "gen_ai.usage.output_tokens": usage.completion_tokens if usage is not None else None,
        },
        kind=SpanKind.SERVER,
        # A 4xx is the client's error, marked on the stage that refused it, not the server's.
        error=x.error if x.status >= 500 else None,
    )
    b.span("account", new_span_id(), root, ended, time.perf_counter(), {})
    tracing.export(b.spans)


def _upstream(b: SpanBuilder, attempt: Attempt, span_id: int, root: int, ended: float) -> None:
    d = attempt.deployment
    end = attempt.ended or ended
    first = attempt.first_byte
    outcome = attempt.outcome
    failed = outcome is not None and outcome.is_failure
    b.span(
        f"upstream {d.name}",
        span_id,
        root,
        attempt.started,
        end,
        {
            "server.address": d.origin.base_url,
            "http.response.status_code": attempt.status or None,
            "swarmgate.ttft_ms": round((first - attempt.started) * 1000, 3) if first else None,
        },
        kind=SpanKind.CLIENT,
        error=str(outcome) if failed else None,
        events=[("first token", first)] if first else (),
    )
