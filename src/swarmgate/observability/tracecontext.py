"""W3C Trace Context (``traceparent``), and the ``Trace`` of a sampled request.

No OpenTelemetry here: the request path and its error writers use this module whether or not
tracing is on (``tracing.py``, which needs the SDK, is imported only when it is).
"""

from __future__ import annotations

import random
from collections.abc import Mapping

_HEX = frozenset("0123456789abcdef")


def parse_traceparent(value: str) -> tuple[int, int, int] | None:
    """``(trace id, parent span id, flags)`` of a W3C ``traceparent`` (version 00, or a later
    version read as 00 would be), or None if it is not a valid one."""
    if len(value) < 55 or value[2] != "-" or value[35] != "-" or value[52] != "-":
        return None
    version, trace_id, span_id, flags = value[:2], value[3:35], value[36:52], value[53:55]
    if not _HEX.issuperset(version + trace_id + span_id + flags) or version == "ff":
        return None
    if version == "00" and len(value) != 55:
        return None
    trace, span = int(trace_id, 16), int(span_id, 16)
    if not trace or not span:
        return None
    return trace, span, int(flags, 16)


def traceparent(trace_id: int, span_id: int, sampled: bool = True) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-{'01' if sampled else '00'}"


def new_span_id() -> int:
    return random.getrandbits(64) or 1


def new_trace_id() -> int:
    return random.getrandbits(128) or 1


def trace_id_of(trace: Trace | None, forward: Mapping[str, str]) -> str | None:
    """A request's trace id, in hex: its sampled trace's, else the client's ``traceparent``'s
    (an unsampled request still belongs to its client's trace); None without either."""
    if trace is not None:
        return trace.hex_id
    value = forward.get("traceparent")
    parsed = parse_traceparent(value) if value is not None else None
    return f"{parsed[0]:032x}" if parsed is not None else None


class Trace:
    """A sampled request's trace: its identity, and the times the stages that record nothing
    of their own reached (perf_counter seconds; 0.0: not reached)."""

    __slots__ = ("admitted", "authenticated", "parent_id", "parsed", "span_id", "state",
                 "trace_id", "upstream_ids")  # fmt: skip

    def __init__(self, trace_id: int, parent_id: int = 0, state: str | None = None) -> None:
        self.trace_id = trace_id
        self.parent_id = parent_id  # the client's span; 0: this request is the trace's root
        self.state = state  # the client's tracestate, kept on the spans
        self.span_id = new_span_id()  # the request's server span
        self.upstream_ids: list[int] = []  # each upstream attempt's span, in order
        self.authenticated = self.parsed = self.admitted = 0.0

    @property
    def hex_id(self) -> str:
        return f"{self.trace_id:032x}"

    def upstream(self) -> str:
        """The ``traceparent`` for the next upstream attempt: its own span, a child of the
        request's."""
        span_id = new_span_id()
        self.upstream_ids.append(span_id)
        return traceparent(self.trace_id, span_id)


class Sampler:
    """Decides, once per request as it arrives, whether it is traced."""

    __slots__ = ("parent_based", "ratio")

    def __init__(self, ratio: float, parent_based: bool = True) -> None:
        self.ratio = ratio
        self.parent_based = parent_based

    def sample(self, forward: Mapping[str, str]) -> Trace | None:
        """The request's trace if it is sampled, else None."""
        value = forward.get("traceparent")
        if value is not None:
            parent = parse_traceparent(value)
            if parent is not None:
                trace_id, parent_id, flags = parent
                sampled = flags & 1 if self.parent_based else random.random() < self.ratio
                if not sampled:
                    return None
                return Trace(trace_id, parent_id, forward.get("tracestate"))
        if random.random() < self.ratio:
            return Trace(new_trace_id())
        return None
