"""A sampled request's spans, built from its ``Exchange`` once it has finished.

The request span (a server span, the child of the client's when it sent a ``traceparent``)
holds one span per stage: authenticate, parse, admit, route, one upstream call per attempt
(a client span, whose id went to the deployment in its ``traceparent``; the first token an
event on it, its time to first token an attribute) and account. A stage the request never
reached has no span; the one it was refused in ends when the request did, with its error.
"""

from __future__ import annotations

import time

from opentelemetry.trace import SpanKind
from opentelemetry.util.types import AttributeValue

from swarmgate.observability.tracecontext import Trace, new_span_id
from swarmgate.observability.tracing import SpanBuilder, Tracing
from swarmgate.pipeline.exchange import Attempt, Exchange


def record(tracing: Tracing, x: Exchange, trace: Trace, ended: float) -> None:
    """Export ``x``'s spans; ``ended``: when it was answered (accounting began)."""
    b = SpanBuilder(tracing, trace)
    root = trace.span_id
    error = x.error if x.status >= 400 else None
    # The stage that refused the request: the first whose end was not recorded.
    marks = [
        ("authenticate", trace.authenticated),
        ("parse", trace.parsed),
        ("admit", trace.admitted),
        ("route", x.attempts[0].started if x.attempts else 0.0),
    ]
    start = x.started
    for name, end in marks:
        attributes = _stage_attributes(name, x)
        if not end:
            b.span(name, new_span_id(), root, start, ended, attributes, error=error)
            break
        b.span(name, new_span_id(), root, start, end, attributes)
        start = end
    for i, attempt in enumerate(x.attempts):
        ids = trace.upstream_ids
        span_id = ids[i] if i < len(ids) else new_span_id()
        _upstream(b, attempt, span_id, root, ended)
    principal = x.principal
    usage = x.usage
    request = x.request
    b.span(
        f"POST {x.route.client_path}",
        root,
        trace.parent_id,
        x.started,
        ended,
        {
            "http.request.method": "POST",
            "url.path": x.route.client_path,
            "http.response.status_code": x.status,
            "swarmgate.request_id": x.head.request_id,
            "swarmgate.outcome": x.outcome,
            "swarmgate.key_id": principal.key_id if principal is not None else None,
            "swarmgate.tier": principal.tier if principal is not None else None,
            "gen_ai.request.model": request.model if request is not None else None,
            "swarmgate.model": x.model if x.pool is not None else None,
            "swarmgate.deployment": x.deployment if x.attempts else None,
            "swarmgate.attempts": len(x.attempts),
            "gen_ai.usage.input_tokens": usage.prompt_tokens if usage is not None else None,
            "gen_ai.usage.output_tokens": usage.completion_tokens if usage is not None else None,
            "swarmgate.stream": request.stream if request is not None else None,
        },
        kind=SpanKind.SERVER,
        error=x.error if x.status >= 500 else None,  # a 4xx is the client's, not an error here
    )
    b.span("account", new_span_id(), root, ended, time.perf_counter(), {})
    tracing.export(b.spans)


def _stage_attributes(name: str, x: Exchange) -> dict[str, AttributeValue | None]:
    if name == "authenticate" and x.principal is not None:
        return {"swarmgate.key_id": x.principal.key_id, "swarmgate.tier": x.principal.tier}
    if name == "admit" and x.grant is not None:
        return {"swarmgate.limit.tier": x.grant.tier}
    if name == "route" and x.pool is not None:
        return {"swarmgate.model": x.pool.model, "swarmgate.balancer": x.pool.strategy}
    return {}


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
            "swarmgate.deployment": d.name,
            "server.address": d.origin.base_url,
            "gen_ai.response.model": d.upstream_model,
            "http.response.status_code": attempt.status or None,
            "swarmgate.outcome": str(outcome) if outcome is not None else None,
            "swarmgate.ttft_ms": round((first - attempt.started) * 1000, 3) if first else None,
        },
        kind=SpanKind.CLIENT,
        error=str(outcome) if failed else None,
        events=[("first token", first)] if first else (),
    )
