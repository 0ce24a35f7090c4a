"""The watchdog bounds time to first byte, idle gaps and the total, with one timer."""

from __future__ import annotations

import asyncio
import time

import pytest

from swarmgate.config import Timeouts
from swarmgate.upstream.watchdog import Watchdog


async def _guarded(timeouts: Timeouts, work) -> tuple[str | None, float]:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    watchdog = Watchdog(timeouts)
    try:
        await work(watchdog)
    except asyncio.CancelledError:
        assert watchdog.absorb()
    finally:
        watchdog.disarm()
    return watchdog.expired, time.monotonic() - started


async def test_no_first_byte_expires_at_the_first_byte_bound() -> None:
    async def silent(w: Watchdog) -> None:
        await asyncio.sleep(5)

    reason, took = await _guarded(Timeouts(first_byte=0.3, idle=0.1, total=5), silent)
    assert reason == "first_byte" and 0.25 < took < 1.0


async def test_a_stall_after_the_first_byte_expires_at_the_idle_bound() -> None:
    async def stalls(w: Watchdog) -> None:
        await asyncio.sleep(0.15)
        w.first_byte()
        await asyncio.sleep(5)

    # idle (0.2) is much shorter than first_byte (2): the stall must end at ~0.35 s, not 2 s.
    reason, took = await _guarded(Timeouts(first_byte=2, idle=0.2, total=5), stalls)
    assert reason == "idle" and 0.3 < took < 1.2


async def test_chunks_keep_a_stream_alive_until_the_total_bound() -> None:
    async def streams(w: Watchdog) -> None:
        w.first_byte()
        while True:
            await asyncio.sleep(0.05)
            w.touch()

    reason, took = await _guarded(Timeouts(first_byte=1, idle=0.2, total=0.6), streams)
    assert reason == "total" and 0.55 < took < 1.3


async def test_work_that_finishes_in_time_is_never_cancelled() -> None:
    async def quick(w: Watchdog) -> None:
        await asyncio.sleep(0.05)
        w.first_byte()
        await asyncio.sleep(0.05)

    reason, _ = await _guarded(Timeouts(first_byte=0.2, idle=0.2, total=1), quick)
    assert reason is None


async def test_an_outside_cancellation_is_not_absorbed() -> None:
    async def body() -> None:
        watchdog = Watchdog(Timeouts(first_byte=5, idle=5, total=5))
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            assert not watchdog.absorb()
            raise
        finally:
            watchdog.disarm()

    task = asyncio.create_task(body())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_first_byte_after_the_first_wake_up_still_gets_the_idle_bound() -> None:
    async def late_then_stalls(w: Watchdog) -> None:
        await asyncio.sleep(0.3)  # the timer already woke once (at idle = 0.2) and re-armed
        w.first_byte()
        await asyncio.sleep(5)

    reason, took = await _guarded(Timeouts(first_byte=3, idle=0.2, total=5), late_then_stalls)
    assert reason == "idle" and 0.45 < took < 1.5


class _Witness:
    probe_up = True


async def test_a_wait_on_a_deployment_gone_down_ends_at_the_next_wake() -> None:
    witness = _Witness()

    async def waits(w: Watchdog) -> None:
        await asyncio.sleep(0.15)
        witness.probe_up = False  # its probes found it hung
        await asyncio.sleep(5)

    started = time.monotonic()
    watchdog = Watchdog(Timeouts(first_byte=5, idle=0.1, total=5), witness)
    try:
        await waits(watchdog)
    except asyncio.CancelledError:
        assert watchdog.absorb()
    finally:
        watchdog.disarm()
    took = time.monotonic() - started
    assert watchdog.expired == "deployment_down" and 0.15 < took < 0.6
    assert "went down" in watchdog.describe()


async def test_after_the_first_byte_the_witness_is_not_asked() -> None:
    witness = _Witness()

    async def streams(w: Watchdog) -> None:
        w.first_byte()
        witness.probe_up = False  # a stream that is flowing is left to its idle bound
        for _ in range(6):
            await asyncio.sleep(0.05)
            w.touch()

    watchdog = Watchdog(Timeouts(first_byte=5, idle=0.1, total=5), witness)
    try:
        await streams(watchdog)
    finally:
        watchdog.disarm()
    assert watchdog.expired is None
