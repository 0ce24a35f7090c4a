"""A request's access-log entry: taken from its ``Exchange`` as it finishes, rendered as a
line by the access log's thread.

``entry`` is all the request pays: one tuple of the values the line shows (strings and
numbers), so that nothing of the request outlives it (a queued exchange, with its dicts and
lists, would be kept past the young generation's collections and cost the collector more
than the tuple costs). The key's id is logged, never its secret (the principal holds none).
"""

from __future__ import annotations

from typing import Any

from swarmgate.pipeline.exchange import Exchange

FIELDS = (
    "time", "request_id", "trace_id", "path", "status", "outcome", "latency_ms", "ttft_ms",
    "key_id", "subject", "tier", "client", "model", "deployment", "attempts", "stream",
    "prompt_tokens", "completion_tokens", "limit", "error",
)  # fmt: skip
Entry = tuple[Any, ...]  # FIELDS' values, in order


def entry(x: Exchange, latency: float, when: float) -> Entry:
    principal = x.principal
    usage = x.usage
    request = x.request
    last = x.attempts[-1] if x.attempts else None
    return (
        when,
        x.head.request_id,
        x.trace_id,
        x.route.client_path,
        x.status,
        x.outcome,
        latency,
        last.first_byte - x.started if last is not None and last.first_byte else None,
        principal.key_id if principal is not None else None,
        principal.subject if principal is not None else None,
        principal.tier if principal is not None else None,
        x.peer,
        x.pool.model if x.pool is not None else (request.model if request else None),
        last.deployment.name if last is not None else None,
        len(x.attempts),
        request.stream if request is not None else None,
        usage.prompt_tokens if usage is not None else None,
        usage.completion_tokens if usage is not None else None,
        _limit(x),
        x.error,
    )


def render(values: Entry) -> dict[str, Any]:
    """The line's object (in the access log's thread)."""
    line = dict(zip(FIELDS, values, strict=True))
    line["latency_ms"] = round(line["latency_ms"] * 1000, 3)
    if line["ttft_ms"] is not None:
        line["ttft_ms"] = round(line["ttft_ms"] * 1000, 3)
    return {"time": line.pop("time"), "event": "request", "method": "POST", **line}


def _limit(x: Exchange) -> str | None:
    """What the limits decided: ``admitted`` (under a tier's limits), ``refused`` (a 429 of
    the gateway's own, before any deployment was tried), None when no limit applied."""
    if x.grant is not None:
        return "admitted"
    if x.status == 429 and not x.attempts:
        return "refused"
    return None
