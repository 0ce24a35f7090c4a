"""W3C trace context: what a traceparent is, and the sampling decision taken from it."""

from __future__ import annotations

import random

import pytest

from swarmgate.observability.tracecontext import Sampler, parse_traceparent, traceparent

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


def test_a_valid_traceparent_is_read_and_written_back_the_same() -> None:
    value = f"00-{TRACE}-{PARENT}-01"
    parsed = parse_traceparent(value)
    assert parsed == (int(TRACE, 16), int(PARENT, 16), 1)
    assert traceparent(parsed[0], parsed[1]) == value
    # A later version is read as version 00 would be, extra fields ignored (W3C §3.2.4).
    assert parse_traceparent(f"01-{TRACE}-{PARENT}-00-more") == (int(TRACE, 16), int(PARENT, 16), 0)


@pytest.mark.parametrize(
    "value",
    [
        "",
        f"00-{TRACE}-{PARENT}",  # no flags
        f"00-{TRACE.upper()}-{PARENT}-01",  # upper case is not allowed
        f"00-{'0' * 32}-{PARENT}-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero span id
        f"ff-{TRACE}-{PARENT}-01",  # the forbidden version
        f"00-{TRACE}-{PARENT}-01-x",  # version 00 has exactly four fields
        f"00_{TRACE}_{PARENT}_01",
    ],
)
def test_an_invalid_traceparent_is_none(value: str) -> None:
    assert parse_traceparent(value) is None


def test_the_clients_sampled_flag_decides_whatever_the_ratio() -> None:
    never, always = Sampler(0.0), Sampler(1.0)
    sampled = never.sample({"traceparent": f"00-{TRACE}-{PARENT}-01", "tracestate": "a=1"})
    assert sampled is not None
    assert (sampled.hex_id, sampled.parent_id, sampled.state) == (TRACE, int(PARENT, 16), "a=1")
    assert always.sample({"traceparent": f"00-{TRACE}-{PARENT}-00"}) is None
    # Not parent-based: the ratio decides, the client's trace id is kept.
    trace = Sampler(1.0, parent_based=False).sample({"traceparent": f"00-{TRACE}-{PARENT}-00"})
    assert trace is not None and trace.hex_id == TRACE


def test_without_a_traceparent_the_ratio_decides_a_new_root_trace() -> None:
    random.seed(7)
    sampler = Sampler(0.1)
    traces = [sampler.sample({}) for _ in range(10_000)]
    kept = [t for t in traces if t is not None]
    assert 900 <= len(kept) <= 1100
    assert all(t.parent_id == 0 for t in kept)
    assert len({t.trace_id for t in kept}) == len(kept)
    # An invalid traceparent is ignored: the request is sampled as if none came.
    assert Sampler(1.0).sample({"traceparent": "garbage"}) is not None
    assert Sampler(0.0).sample({"traceparent": "garbage"}) is None


def test_each_upstream_attempt_gets_a_span_of_its_own_in_the_trace() -> None:
    trace = Sampler(1.0).sample({})
    assert trace is not None
    first, second = trace.upstream(), trace.upstream()
    a, b = parse_traceparent(first), parse_traceparent(second)
    assert a is not None and b is not None
    assert a[0] == b[0] == trace.trace_id and a[2] == b[2] == 1
    assert [a[1], b[1]] == trace.upstream_ids and a[1] != b[1]
