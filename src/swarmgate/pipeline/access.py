"""A request's access-log entry, rendered from its ``Exchange`` by the access log's thread.

The request queues only ``(exchange, latency, time)`` (``Accounting.finish``); an exchange is
not changed once finished, so reading it later, from another thread, reads what it ended as.
The key's id is logged, never its secret (the principal holds none).
"""

from __future__ import annotations

from typing import Any

from swarmgate.pipeline.exchange import Exchange

Entry = tuple[Exchange, float, float]  # the exchange, its latency (s), when it ended (epoch s)


def render(entry: Entry) -> dict[str, Any]:
    x, latency, when = entry
    principal = x.principal
    usage = x.usage
    request = x.request
    last = x.attempts[-1] if x.attempts else None
    return {
        "time": when,
        "event": "request",
        "request_id": x.head.request_id,
        "trace_id": x.trace_id,
        "method": "POST",
        "path": x.route.client_path,
        "status": x.status,
        "outcome": x.outcome,
        "latency_ms": round(latency * 1000, 3),
        "ttft_ms": (
            round((last.first_byte - x.started) * 1000, 3)
            if last is not None and last.first_byte
            else None
        ),
        "key_id": principal.key_id if principal is not None else None,
        "subject": principal.subject if principal is not None else None,
        "tier": principal.tier if principal is not None else None,
        "client": x.peer,
        "model": x.pool.model if x.pool is not None else (request.model if request else None),
        "deployment": last.deployment.name if last is not None else None,
        "attempts": len(x.attempts),
        "stream": request.stream if request is not None else None,
        "prompt_tokens": usage.prompt_tokens if usage is not None else None,
        "completion_tokens": usage.completion_tokens if usage is not None else None,
        "limit": _limit(x),
        "error": x.error,
    }


def _limit(x: Exchange) -> str | None:
    """What the limits decided: ``admitted`` (under a tier's limits), ``refused`` (a 429 of
    the gateway's own, before any deployment was tried), None when no limit applied."""
    if x.grant is not None:
        return "admitted"
    if x.status == 429 and not x.attempts:
        return "refused"
    return None
