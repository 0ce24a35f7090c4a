"""The counter stores: all of a request's limits taken together or none; settle."""

from __future__ import annotations

import asyncio
import math
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from swarmgate.errors import StoreError
from swarmgate.observability.metrics import Metrics
from swarmgate.store.counters import SWEEP_EVERY, MemoryCounters
from swarmgate.store.redis_counters import RedisCounters
from swarmgate.types import Check, CheckKind
from tests.plugins.servers import REDIS_BIN, free_port

RPM = Check(CheckKind.REQUESTS, "k:rpm", 3, 60.0, 1, "rpm", "key")
TPM = Check(CheckKind.TOKENS, "k:tpm", 100, 60.0, 1, "tpm", "key")
CONC = Check(CheckKind.CONCURRENT, "k:c", 1, 600.0, 1, "concurrent", "key")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_all_or_none_a_refusal_charges_nothing() -> None:
    counters = MemoryCounters(Clock())
    first = counters.take_now((RPM, CONC), 0, "l1")
    assert first.refused == -1
    refused = counters.take_now((RPM, CONC), 0, "l2")
    assert refused.refused == 1  # the concurrency slot is taken
    # The request window was not charged by the refused request: two more fit after release.
    counters.settle((RPM, CONC), first, "l1", 0, 0)
    assert counters.take_now((RPM,), 0, "l3").refused == -1
    assert counters.take_now((RPM,), 0, "l4").refused == -1
    assert counters.take_now((RPM,), 0, "l5").refused == 0


def test_tokens_are_reserved_then_settled_to_the_usage() -> None:
    clock = Clock()
    counters = MemoryCounters(clock)
    verdict = counters.take_now((TPM,), 80, "l1")
    assert verdict.remaining == (20,)
    assert counters.take_now((TPM,), 30, "l2").refused == 0
    counters.settle((TPM,), verdict, "l1", 80, 10)
    assert counters.take_now((TPM,), 90, "l3").refused == -1


def test_overshoot_is_debt_paid_by_the_next_requests() -> None:
    clock = Clock()
    counters = MemoryCounters(clock)
    verdict = counters.take_now((TPM,), 10, "l1")
    counters.settle((TPM,), verdict, "l1", 10, 150)  # used 140 more than reserved
    refused = counters.take_now((TPM,), 1, "l2")
    assert refused.refused == 0 and refused.wait == 60.0
    clock.now += 60
    assert counters.take_now((TPM,), 1, "l3").refused == -1


def test_a_scaled_store_grants_its_share() -> None:
    counters = MemoryCounters(Clock(), scale=1 / 3)
    check = RPM._replace(limit=9)
    taken = [counters.take_now((check,), 0, f"l{i}").refused for i in range(5)]
    assert taken == [-1, -1, -1, 0, 0]


# Real Redis: the same semantics from the Lua script, atomic and coalesced.


async def redis_counters(url: str, **kw: Any) -> RedisCounters:
    counters = RedisCounters(url, Metrics(), **kw)
    await counters.start()
    return counters


async def test_redis_all_or_none_and_release(redis_url: str) -> None:
    counters = await redis_counters(redis_url)
    try:
        first = await counters.take((RPM, CONC), 0, "l1")
        assert first.refused == -1 and first.remaining == (2, 0)
        refused = await counters.take((RPM, CONC), 0, "l2")
        assert refused.refused == 1 and refused.wait == 1
        counters.settle((RPM, CONC), first, "l1", 0, 0)
        assert (await counters.take((RPM,), 0, "l3")).refused == -1
        assert (await counters.take((RPM,), 0, "l4")).refused == -1
        fourth = await counters.take((RPM,), 0, "l5")
        assert fourth.refused == 0 and 59 < fourth.wait <= 60
    finally:
        await counters.close()


async def test_redis_tokens_reserved_settled_and_debt(redis_url: str) -> None:
    counters = await redis_counters(redis_url)
    try:
        verdict = await counters.take((TPM,), 80, "l1")
        assert verdict.remaining == (20,)
        assert (await counters.take((TPM,), 30, "l2")).refused == 0
        counters.settle((TPM,), verdict, "l1", 80, 10)
        assert (await counters.take((TPM,), 90, "l3")).refused == -1  # 10 + 90
        after = await counters.take((TPM,), 1, "l4")
        assert after.refused == 0
        assert math.isinf((await counters.take((TPM,), 101, "l5")).wait)
        other = TPM._replace(key="k2:tpm")
        small = await counters.take((other,), 5, "d1")
        counters.settle((other,), small, "d1", 5, 150)  # 145 of debt
        await counters.take((RPM._replace(key="k2:rpm"),), 0, "flush")  # carries the settle
        assert (await counters.take((other,), 1, "d2")).refused == 0
    finally:
        await counters.close()


async def test_redis_admissions_of_one_tick_share_one_round_trip(redis_url: str) -> None:
    metrics = Metrics()
    counters = RedisCounters(redis_url, metrics)
    await counters.start()
    try:
        check = RPM._replace(limit=50)
        verdicts = await asyncio.gather(*(counters.take((check,), 0, f"l{i}") for i in range(80)))
        assert sum(v.refused == -1 for v in verdicts) == 50
        metrics.flush()
        trips = metrics.registry.get_sample_value(
            "gateway_limiter_redis_seconds_count", {"op": "admit"}
        )
        assert trips is not None and trips <= 3
    finally:
        await counters.close()


async def test_redis_scripts_are_reloaded_after_noscript(redis_url: str) -> None:
    counters = await redis_counters(redis_url)
    try:
        with redis.Redis.from_url(redis_url) as client:
            client.script_flush()
        assert (await counters.take((RPM,), 0, "l1")).refused == -1
        assert counters.up
    finally:
        await counters.close()


async def test_a_redis_that_cannot_run_the_script_stops_start_up(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            str(REDIS_BIN),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            str(tmp_path),
            "--rename-command",
            "EVALSHA",
            "",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"redis://127.0.0.1:{port}/0"
        for _ in range(200):
            try:
                with redis.Redis.from_url(url) as client:
                    client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.02)
        with pytest.raises(StoreError, match="cannot run the rate limiter's Lua script"):
            await redis_counters(url)
    finally:
        proc.terminate()
        proc.wait(10)


def test_idle_counters_are_swept_and_busy_ones_kept() -> None:
    clock = Clock()
    counters = MemoryCounters(clock)
    busy = CONC._replace(key="held", period=1e9)  # a lease that outlives the test
    held = counters.take_now((busy,), 0, "keep")
    for i in range(SWEEP_EVERY + 10):
        clock.now += 1.0
        fresh = (RPM._replace(key=f"k{i}", period=0.5), CONC._replace(key=f"c{i}"))
        verdict = counters.take_now(fresh, 0, f"l{i}")
        assert verdict.refused == -1
        counters.settle(fresh, verdict, f"l{i}", 0, 0)
    assert len(counters._states) < 40  # of ~8,000: the idle ones went
    assert counters.take_now((busy,), 0, "other").refused == 0
    counters.settle((busy,), held, "keep", 0, 0)
    assert counters.take_now((busy,), 0, "other").refused == -1


@given(
    requests=st.lists(
        st.tuples(
            st.lists(st.sampled_from(range(3)), min_size=1, max_size=3, unique=True),
            st.integers(0, 40),
            st.floats(0, 5),
        ),
        min_size=1,
        max_size=80,
    )
)
def test_a_request_charges_all_its_limits_or_none(
    requests: list[tuple[list[int], int, float]],
) -> None:
    clock = Clock()
    counters = MemoryCounters(clock)
    pool = (
        Check(CheckKind.REQUESTS, "r", 5, 30.0, 1, "rpm"),
        Check(CheckKind.TOKENS, "t", 100, 30.0, 1, "tpm"),
        Check(CheckKind.RATE, "g", 2.0, 0.5, 3, "rps"),
    )

    def totals() -> list[float]:
        out = []
        for check in pool:
            state = counters._states.get(check.key)
            if state is None:
                out.append(0.0)
            elif check.kind is CheckKind.RATE:
                out.append(state[0])
            else:
                state.trim(clock.now)
                out.append(state.total)
        return out

    for picked, tokens, gap in requests:
        clock.now += gap
        checks = tuple(pool[i] for i in picked)
        before = totals()
        verdict = counters.take_now(checks, tokens, "l")
        after = totals()
        if verdict.refused >= 0:
            assert after == before  # nothing charged
            assert verdict.wait > 0
        else:
            for i in picked:
                assert after[i] > before[i] or (pool[i].kind is CheckKind.TOKENS and not tokens)


async def test_the_replica_count_is_learned_from_heartbeats(redis_url: str) -> None:
    a = await redis_counters(redis_url)
    try:
        b = await redis_counters(redis_url)
        try:
            deadline = time.monotonic() + 5
            while (a.replicas, b.replicas) != (2, 2) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert (a.replicas, b.replicas) == (2, 2)
            assert a.fallback.scale == b.fallback.scale == 0.5
        finally:
            await b.close()  # leaves the count at once
        with redis.Redis.from_url(redis_url) as client:
            assert client.zcard("swarmgate:limits:replicas") == 1
    finally:
        await a.close()


async def test_redis_gives_back_what_a_cancelled_admission_took(redis_url: str) -> None:
    counters = await redis_counters(redis_url)
    try:
        waiting = asyncio.ensure_future(counters.take((CONC,), 0, "gone"))
        await asyncio.sleep(0)  # queued: the script will run
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        for _ in range(50):  # the lease it took is released, not left to expire
            verdict = await counters.take((CONC,), 0, "next")
            if verdict.refused < 0:
                break
            await asyncio.sleep(0.02)
        assert verdict.refused == -1
    finally:
        await counters.close()


RPS = Check(CheckKind.RATE, "k:rps", 2.0, 0.5, 2, "rps", "key")
# (advance the clock by, tokens reserved, tokens used at settle or None: still in flight)
STEPS = st.lists(
    st.tuples(
        st.floats(0, 30, allow_nan=False),
        st.integers(0, 60),
        st.one_of(st.none(), st.integers(0, 90)),
    ),
    max_size=60,
)


@given(STEPS)
def test_the_bound_fast_path_decides_as_the_general_path(steps: list[Any]) -> None:
    """``take_now`` binds a plan's counters and decides it inline (``_take_bound``); the same
    requests through the general ``_take`` give the same verdicts, remaining and resets."""
    checks = (RPS, RPM, TPM, CONC._replace(limit=2, period=45.0))
    clocks = Clock(), Clock()
    fast, slow = MemoryCounters(clocks[0]), MemoryCounters(clocks[1])
    held: list[tuple[Any, Any, str, int, int]] = []
    for n, (advance, tokens, used) in enumerate(steps):
        for clock in clocks:
            clock.now += advance
        lease = f"l{n}"
        a = fast.take_now(checks, tokens, lease)
        b = slow._take(checks, clocks[1].now, tokens, lease)
        assert a[:4] == b[:4]  # refused, wait, remaining, reset
        if a.refused < 0:
            if used is None:
                held.append((a, b, lease, tokens, tokens))
            else:
                fast.settle(checks, a, lease, tokens, used)
                slow.settle(checks, b, lease, tokens, used)
    for a, b, lease, tokens, used in held:
        fast.settle(checks, a, lease, tokens, used)
        slow.settle(checks, b, lease, tokens, used)
    last_a, last_b = fast.take_now(checks, 1, "end"), slow._take(checks, clocks[1].now, 1, "end")
    assert last_a[:4] == last_b[:4]


def test_a_sweep_unbinds_so_a_shared_counter_is_never_split() -> None:
    """Two plans share the owner's counter; after a sweep drops it, both bind the new one."""
    clock = Clock()
    counters = MemoryCounters(clock)
    owner = Check(CheckKind.REQUESTS, "owner:o:rpm", 2, 60.0, 1, "rpm", "owner")
    one, other = (owner, RPM), (owner, RPM._replace(key="k2:rpm"))
    assert counters.take_now(one, 0, "a").refused == -1
    clock.now += 120  # every entry slid out: the sweep drops the counters
    for _ in range(SWEEP_EVERY):
        counters.take_now((), 0, "s")
    assert counters.take_now(one, 0, "b").refused == -1
    assert counters.take_now(other, 0, "c").refused == -1
    assert counters.take_now(one, 0, "d").refused == 0  # the owner's 2 per minute, shared
