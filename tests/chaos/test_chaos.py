"""Chaos, bounded for CI: under steady load on a two-replica model, one replica is killed,
hung and made to answer 500s, and restored after each. No non-streamed request fails while the
other replica serves; the circuit opens within its threshold; a recovered replica serves again
within one probe interval; while one replica hangs the model keeps more than half its
throughput; a stream fails only by being cut mid-way, with the SSE error event. The long
form, with 40 clients and 20 s phases, is ``bench/chaos.py``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.chaos.scenario import RESILIENCE, Load, Replica, gateway_config, metric, phase
from tests.plugins.processes import Gateway

CLIENTS = 6
STREAMS = 2  # streamed clients beside them: a stream cut mid-way must end with an error event
PHASE = 3.0  # seconds of each fault
PROBE_INTERVAL = RESILIENCE["health_check"]["interval"]
THRESHOLD = RESILIENCE["circuit_breaker"]["threshold"]
# The time a restored replica may take to serve again: one probe interval, plus what a
# 2-core machine shared with other test processes adds to a sim's first answers.
READMIT_SLACK = 1.0


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[tuple[Replica, Replica]]:
    a, b = Replica(tmp_path, "a"), Replica(tmp_path, "b")
    a.start()
    b.start()
    yield a, b
    for r in (a, b):
        r.stop()


def test_one_replica_killed_hung_and_failing_costs_no_request(
    replicas: tuple[Replica, Replica], gateway_factory: Callable[..., Gateway]
) -> None:
    a, b = replicas
    gw = gateway_factory(gateway_config([a, b]))
    load = Load(gw, CLIENTS, STREAMS)
    load.start()
    try:
        time.sleep(1.5)
        t0 = time.monotonic()
        time.sleep(PHASE)
        baseline = phase(load, "baseline", t0, time.monotonic())
        assert baseline.failures == 0 and set(baseline.served) == {"a", "b"}

        # Killed: connections refused, failed over at once; the circuit opens.
        errors_before = metric(gw, "gateway_upstream_errors_total", deployment="a", kind="connect")
        a.kill()
        t1 = time.monotonic()
        time.sleep(PHASE)
        killed = phase(load, "killed", t1, time.monotonic())
        assert killed.failures == 0, killed.errors
        assert metric(gw, "gateway_circuit_opens_total", model="m", deployment="a") >= 1
        connect_errors = (
            metric(gw, "gateway_upstream_errors_total", deployment="a", kind="connect")
            - errors_before
        )
        # Within the threshold: each client had at most one request in flight on it when
        # the threshold was reached; then nothing more went there (its probes fail too).
        assert connect_errors <= THRESHOLD + CLIENTS
        a.start()
        back = load.first_served_by("a", time.monotonic(), PROBE_INTERVAL + READMIT_SLACK)
        assert back is not None, "a restarted replica was not readmitted within a probe interval"

        # Hung: accepts connections, never answers. Its probes time out, and the requests
        # waiting on it are cut off and failed over.
        a.hang()
        t2 = time.monotonic()
        time.sleep(PHASE * 2)
        hung = phase(load, "hung", t2, time.monotonic())
        assert hung.failures == 0, hung.errors
        assert hung.throughput > baseline.throughput / 2, (hung.row(), baseline.row())
        assert metric(gw, "gateway_deployment_up", model="m", deployment="a") == 0
        a.resume()
        back = load.first_served_by("a", time.monotonic(), PROBE_INTERVAL + READMIT_SLACK)
        assert back is not None, "a resumed replica was not readmitted within a probe interval"

        # Answers 500s: its probes still pass, its circuit opens on the failures, every
        # failure is retried on b.
        opens_before = metric(gw, "gateway_circuit_opens_total", model="m", deployment="a")
        a.kill()
        a.start(failures={"error_rate": 1.0, "error_status": 500})
        t3 = time.monotonic()
        time.sleep(PHASE)
        failing = phase(load, "500s", t3, time.monotonic())
        assert failing.failures == 0, failing.errors
        assert failing.served["a"] == 0
        assert metric(gw, "gateway_circuit_opens_total", model="m", deployment="a") > opens_before
        a.kill()
        a.start()
        back = load.first_served_by("a", time.monotonic(), PROBE_INTERVAL + READMIT_SLACK)
        assert back is not None, "a repaired replica was not readmitted"
    finally:
        load.stop()
    everything = phase(load, "all", 0.0, time.monotonic())
    for p in (baseline, killed, hung, failing):
        print(p.row())  # shown with -s
    assert everything.failures == 0, everything.errors
    streams = load.streams()
    # A stream fails only by being cut after its first chunk, with the gateway's SSE error
    # event (the SDK raises it as an APIError); before its first chunk it is failed over.
    broken = [s.error for s in streams if not s.ok and not s.cut]
    assert streams and not broken, broken[:5]
    cut = sum(s.cut for s in streams)
    print(f"streams: {len(streams)}, cut mid-way with an error event: {cut}")
