"""The lock-free counting in front of prometheus-client exposes what prometheus-client would."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import generate_latest

from swarmgate.observability.metrics import LATENCY_BUCKETS, Metrics


def _samples(text: bytes, prefix: str) -> list[str]:
    return sorted(line for line in text.decode().splitlines() if line.startswith(prefix))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.floats(0, 100, allow_nan=False),
            st.sampled_from(LATENCY_BUCKETS),  # on a bound: the bucket rule matters
        ),
        max_size=40,
    ),
    st.integers(1, 3),
)
def test_histograms_bucket_as_prometheus_client_does(values: list[float], flushes: int) -> None:
    metrics = Metrics()
    reference = Histogram(
        "gateway_upstream_duration_seconds",
        "same",
        ["model", "deployment"],
        buckets=LATENCY_BUCKETS,
        registry=(registry := CollectorRegistry()),
    )
    for i, value in enumerate(values):
        metrics.upstream("m", "d", value)
        reference.labels("m", "d").observe(value)
        if i % flushes == 0:
            metrics.flush()  # flushing in between changes nothing
    ours = _samples(metrics.render(), "gateway_upstream_duration_seconds_")
    theirs = _samples(generate_latest(registry), "gateway_upstream_duration_seconds_")

    def split(samples: list[str]) -> tuple[list[str], float]:
        exact = [s for s in samples if "_created" not in s and "_sum" not in s]
        total = [float(s.rsplit(" ", 1)[1]) for s in samples if "_sum" in s]
        return exact, sum(total)

    (our_counts, our_sum), (their_counts, their_sum) = split(ours), split(theirs)
    assert our_counts == their_counts  # every bucket and the count, exactly
    assert our_sum == pytest.approx(their_sum)  # the same sum, added in another order


def test_counters_sum_and_the_in_flight_gauge_is_current() -> None:
    metrics = Metrics()
    for status in (200, 200, 502):
        metrics.request("POST", "/v1/chat/completions", status, 0.01)
    metrics.tokens("m", 10, 0)
    metrics.tokens("m", 5, 7)
    metrics.in_flight = 3
    registry = metrics.registry
    metrics.flush()
    get = registry.get_sample_value
    requests = {"method": "POST", "endpoint": "/v1/chat/completions"}
    assert get("gateway_requests_total", {**requests, "status": "200"}) == 2
    assert get("gateway_requests_total", {**requests, "status": "502"}) == 1
    assert get("gateway_tokens_total", {"model": "m", "direction": "input"}) == 15
    assert get("gateway_tokens_total", {"model": "m", "direction": "output"}) == 7
    assert get("gateway_requests_in_flight", {}) == 3
    metrics.request("POST", "/v1/chat/completions", 200, 0.01)
    metrics.flush()
    assert get("gateway_requests_total", {**requests, "status": "200"}) == 3


def test_active_users_are_distinct_callers_within_the_window() -> None:
    metrics = Metrics(active_users_window=60)
    now = time.perf_counter()
    metrics.seen("key-a", now - 120)  # outside the window
    metrics.seen("key-b", now - 30)
    metrics.seen("key-c", now)
    metrics.seen("key-c", now)
    metrics.flush()
    assert metrics.registry.get_sample_value("gateway_active_users", {}) == 2


def test_dependencies_are_shown_up_then_down() -> None:
    metrics = Metrics()
    assert b"gateway_dependency_up{" not in metrics.render()  # nothing checked yet
    metrics.dependency("database", True)
    metrics.dependency("redis", True)
    metrics.dependency("redis", False)
    text = metrics.render().decode()
    assert 'gateway_dependency_up{dependency="database"} 1.0' in text
    assert 'gateway_dependency_up{dependency="redis"} 0.0' in text
