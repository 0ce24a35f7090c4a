"""The pure parts of a simulated model: prefix cache, time to first token, slots and queue."""

from __future__ import annotations

import asyncio
import random

import pytest

from swarmgate.errors import ServiceUnavailable
from swarmgate.sim.engine import ModelEngine, PrefixCache, ttft_seconds
from swarmgate.sim.profile import ModelProfile, PrefixCacheProfile


def tokens(n: int, salt: str = "t") -> list[str]:
    return [f"{salt}{i}" for i in range(n)]


def test_prefix_cache_hits_leading_full_blocks_only() -> None:
    cache = PrefixCache(PrefixCacheProfile(block_tokens=4, capacity_blocks=100))
    assert cache.match_and_insert(tokens(10)) == 0  # cold; two full blocks stored
    assert len(cache) == 2
    assert cache.match_and_insert(tokens(10)) == 8
    # Same first block, different second: the hit run stops at the first miss.
    prompt = tokens(4) + tokens(8, "x")
    assert cache.match_and_insert(prompt) == 4
    # A block equal in content but at another position is not a hit (chained hashes).
    assert cache.match_and_insert(tokens(4, "x") + tokens(4)) == 0


def test_prefix_cache_evicts_least_recently_used() -> None:
    cache = PrefixCache(PrefixCacheProfile(block_tokens=2, capacity_blocks=4))
    a, b = tokens(4, "a"), tokens(4, "b")
    cache.match_and_insert(a)
    cache.match_and_insert(b)
    assert cache.match_and_insert(a) == 4  # refreshes a: b is now the oldest
    cache.match_and_insert(tokens(4, "c"))
    assert len(cache) == 4
    assert cache.match_and_insert(a) == 4
    assert cache.match_and_insert(b) == 0


def test_ttft_shrinks_with_the_cached_share_down_to_hit_ttft() -> None:
    profile = ModelProfile(ttft_ms=100, jitter_ms=10, prefix_cache={"hit_ttft_ms": 20})
    assert ttft_seconds(profile, 0, 64, 0.0) == pytest.approx(0.100)
    assert ttft_seconds(profile, 32, 64, 0.0) == pytest.approx(0.060)
    assert ttft_seconds(profile, 64, 64, 0.0) == pytest.approx(0.020)
    assert ttft_seconds(profile, 0, 64, 0.5) == pytest.approx(0.105)


def test_prefill_counts_tokens_and_cache_use() -> None:
    engine = ModelEngine("m", ModelProfile(prefix_cache={"block_tokens": 4}), random.Random(0))
    engine.prefill(tokens(10))
    engine.prefill(tokens(10))
    assert engine.counters.prompt_tokens == 20
    assert engine.counters.prefix_cache_queries == 20
    assert engine.counters.prefix_cache_hits == 8


async def test_slots_queue_in_fifo_order_and_reject_beyond_max_queue() -> None:
    engine = ModelEngine("m", ModelProfile(slots=1, max_queue=2), random.Random(0))
    order: list[int] = []
    release = asyncio.Event()

    async def request(i: int) -> None:
        async with engine.slot(16):
            order.append(i)
            await release.wait()

    first = asyncio.create_task(request(0))
    await asyncio.sleep(0)
    queued = [asyncio.create_task(request(i)) for i in (1, 2)]
    await asyncio.sleep(0)
    assert (engine.running, engine.waiting) == (1, 2)
    assert engine.kv_cache_usage > 0
    with pytest.raises(ServiceUnavailable):
        async with engine.slot(16):
            pass
    release.set()
    await asyncio.gather(first, *queued)
    assert order == [0, 1, 2]
    assert (engine.running, engine.waiting, engine.blocks_in_use) == (0, 0, 0)


async def test_a_cancelled_waiter_leaves_the_queue_without_leaking_a_slot() -> None:
    engine = ModelEngine("m", ModelProfile(slots=1), random.Random(0))
    release = asyncio.Event()

    async def hold() -> None:
        async with engine.slot(1):
            await release.wait()

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)
    waiter = asyncio.create_task(hold())
    await asyncio.sleep(0)
    assert engine.waiting == 1
    waiter.cancel()
    await asyncio.sleep(0)
    assert engine.waiting == 0
    release.set()
    await holder
    assert engine.running == 0
    async with engine.slot(1):
        assert engine.running == 1
