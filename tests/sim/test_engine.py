"""The pure parts of a simulated model: time to first token, slots and queue, cache use."""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

import pytest

from swarmgate.errors import BadRequest, ServiceUnavailable
from swarmgate.sim.engine import ModelEngine, ttft_seconds
from swarmgate.sim.profile import ModelProfile

LONG = {"ttft_ms": 20, "prefill_tokens_per_second": 1000, "prefix_cache": {"block_tokens": 16}}


def tokens(n: int, salt: str = "t") -> list[str]:
    return [f"{salt}{i}" for i in range(n)]


def engine(seed: int = 0, speed: float = 1.0, **profile: Any) -> ModelEngine:
    return ModelEngine("m", ModelProfile(**profile).at_speed(speed), random.Random(seed))


async def prefill_seconds(model: ModelEngine, prompt: list[str]) -> float:
    async with model.slot(prompt, len(prompt) + 16) as prefill:
        return prefill.seconds


def test_ttft_shrinks_with_the_cached_share_down_to_hit_ttft() -> None:
    profile = ModelProfile(ttft_ms=100, jitter_ms=10, prefix_cache={"hit_ttft_ms": 20})
    assert ttft_seconds(profile, 0, 64, 0.0) == pytest.approx(0.100)
    assert ttft_seconds(profile, 32, 64, 0.0) == pytest.approx(0.060)
    assert ttft_seconds(profile, 64, 64, 0.0) == pytest.approx(0.020)
    assert ttft_seconds(profile, 0, 64, 0.5) == pytest.approx(0.105)


def test_with_a_prefill_rate_ttft_grows_with_the_uncached_tokens() -> None:
    profile = ModelProfile(ttft_ms=20, jitter_ms=10, prefill_tokens_per_second=2000)
    assert ttft_seconds(profile, 0, 0, 0.0) == pytest.approx(0.020)
    assert ttft_seconds(profile, 0, 4000, 0.0) == pytest.approx(2.020)
    assert ttft_seconds(profile, 3200, 4000, 0.0) == pytest.approx(0.420)
    assert ttft_seconds(profile, 4000, 4000, 0.5) == pytest.approx(0.025)


async def test_a_repeated_long_prompt_prefills_only_its_uncached_tail() -> None:
    model = engine(**LONG)
    prompt = tokens(2000)
    assert await prefill_seconds(model, prompt) == pytest.approx(2.020)
    assert await prefill_seconds(model, prompt) == pytest.approx(0.020)
    # A follow-up turn: the conversation so far is cached, the new 100 tokens (and the
    # partial block before them) are not.
    follow_up = [*prompt, *tokens(100, "turn2-")]
    assert await prefill_seconds(model, follow_up) == pytest.approx(0.020 + 0.100)
    # Another server (engine) has seen nothing.
    assert await prefill_seconds(engine(**LONG), prompt) == pytest.approx(2.020)


async def test_counters_report_the_prompt_and_cache_in_tokens() -> None:
    model = engine(prefix_cache={"block_tokens": 4})
    for _ in range(2):
        await prefill_seconds(model, tokens(10))
    assert model.counters.prompt_tokens == 20
    assert model.counters.prefix_cache_queries == 20
    assert model.counters.prefix_cache_hits == 8
    off = engine(prefix_cache={"enabled": False})
    for _ in range(2):
        await prefill_seconds(off, tokens(10))
    assert (off.counters.prompt_tokens, off.counters.prefix_cache_queries) == (20, 0)


async def test_a_queued_request_looks_the_cache_up_when_its_slot_comes() -> None:
    model = engine(slots=1, **LONG)
    prompt = tokens(320)
    release = asyncio.Event()
    seen: list[int] = []

    async def request() -> None:
        async with model.slot(prompt, 400) as prefill:
            seen.append(prefill.cached_tokens)
            await release.wait()

    tasks = [asyncio.create_task(request()) for _ in range(2)]
    await asyncio.sleep(0)
    assert (model.running, model.waiting, seen) == (1, 1, [0])
    release.set()
    await asyncio.gather(*tasks)
    assert seen == [0, 320]


async def test_ttft_is_the_same_for_the_same_seed_and_requests() -> None:
    async def run(seed: int) -> list[float]:
        model = engine(seed, jitter_ms=50, **LONG)
        prompts = [tokens(n, f"p{n % 3}") for n in (300, 40, 300, 700, 40, 1000)]
        return [await prefill_seconds(model, p) for p in prompts]

    assert await run(7) == await run(7)
    assert await run(7) != await run(8)


async def test_speed_scales_prefill_and_decode() -> None:
    fast, slow = engine(**LONG), engine(speed=0.25, **LONG)
    prompt = tokens(992)  # 62 full blocks
    assert await prefill_seconds(fast, prompt) == pytest.approx(0.020 + 0.992)
    assert await prefill_seconds(slow, prompt) == pytest.approx(4 * (0.020 + 0.992))
    assert await prefill_seconds(slow, prompt) == pytest.approx(4 * 0.020)  # cached: overhead
    assert (fast.profile.tokens_per_second, slow.profile.tokens_per_second) == (60, 15)


async def test_slots_queue_in_fifo_order_and_reject_beyond_max_queue() -> None:
    model = engine(slots=1, max_queue=2)
    order: list[int] = []
    release = asyncio.Event()

    async def request(i: int) -> None:
        async with model.slot(tokens(4, str(i)), 16):
            order.append(i)
            await release.wait()

    first = asyncio.create_task(request(0))
    await asyncio.sleep(0)
    queued = [asyncio.create_task(request(i)) for i in (1, 2)]
    await asyncio.sleep(0)
    assert (model.running, model.waiting) == (1, 2)
    assert model.kv_cache_usage > 0
    with pytest.raises(ServiceUnavailable):
        async with model.slot([], 16):
            pass
    release.set()
    await asyncio.gather(first, *queued)
    assert order == [0, 1, 2]
    assert (model.running, model.waiting, model.blocks_in_use) == (0, 0, 0)


async def test_a_cancelled_waiter_leaves_the_queue_without_leaking_a_slot() -> None:
    model = engine(slots=1)
    release = asyncio.Event()

    async def hold() -> None:
        async with model.slot([], 1):
            await release.wait()

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)
    waiter = asyncio.create_task(hold())
    await asyncio.sleep(0)
    assert model.waiting == 1
    waiter.cancel()
    await asyncio.sleep(0)
    assert model.waiting == 0
    release.set()
    await holder
    assert (model.running, model.blocks_in_use) == (0, 0)
    async with model.slot([], 1):
        assert model.running == 1


async def test_with_wait_for_blocks_a_request_waits_for_room_first_come_first_served() -> None:
    cache = {"block_tokens": 4, "capacity_blocks": 10, "wait_for_blocks": True}
    model = engine(slots=4, prefix_cache=cache)
    release = {name: asyncio.Event() for name in "abc"}
    admitted: list[str] = []

    async def request(name: str, prompt: list[str], kv_tokens: int) -> None:
        async with model.slot(prompt, kv_tokens):
            admitted.append(name)
            await release[name].wait()

    a = asyncio.create_task(request("a", tokens(8, "a"), 32))  # 8 blocks
    await asyncio.sleep(0)
    b = asyncio.create_task(request("b", tokens(8, "b"), 16))  # 4 blocks: waits for room
    await asyncio.sleep(0)
    c = asyncio.create_task(request("c", tokens(4, "c"), 4))  # 1 block: fits, but after b
    await asyncio.sleep(0)
    assert (admitted, model.running, model.waiting, model.blocks_in_use) == (["a"], 1, 2, 8)
    release["a"].set()
    await a
    await asyncio.sleep(0)
    assert (admitted, model.running, model.blocks_in_use) == (["a", "b", "c"], 2, 5)
    release["b"].set()
    release["c"].set()
    await asyncio.gather(b, c)
    assert (model.running, model.waiting, model.blocks_in_use) == (0, 0, 0)


async def test_with_wait_for_blocks_a_shared_prefix_held_by_others_costs_no_room() -> None:
    cache = {"block_tokens": 4, "capacity_blocks": 10, "wait_for_blocks": True}
    model = engine(slots=4, prefix_cache=cache)
    system = tokens(24, "sys")  # 6 blocks
    async with model.slot([*system, *tokens(4, "u1")], 32):  # 6 shared + 2 private
        assert model.blocks_in_use == 8
        # Alone it would need 8 blocks; the 6 it shares with the running request are held.
        async with model.slot([*system, *tokens(4, "u2")], 32) as second:
            assert second.cached_tokens == 24
            assert model.blocks_in_use == 10


async def test_with_wait_for_blocks_a_request_that_can_never_fit_is_refused() -> None:
    cache = {"block_tokens": 4, "capacity_blocks": 10, "wait_for_blocks": True}
    model = engine(prefix_cache=cache)
    with pytest.raises(BadRequest, match="11 KV-cache blocks"):
        async with model.slot(tokens(8), 44):
            pass
    async with model.slot(tokens(8), 40) as prefill:  # exactly the capacity
        assert prefill.blocks.private == 8
    # Without wait_for_blocks, blocks are overcommitted and the gauge reads 1.
    loose = engine(prefix_cache={**cache, "wait_for_blocks": False})
    async with loose.slot(tokens(8), 80):
        assert (loose.blocks_in_use, loose.kv_cache_usage) == (20, 1.0)


async def test_a_cancelled_head_of_the_queue_lets_the_next_request_in() -> None:
    cache = {"block_tokens": 4, "capacity_blocks": 10, "wait_for_blocks": True}
    model = engine(slots=4, prefix_cache=cache)
    release = asyncio.Event()

    async def hold(kv_tokens: int) -> None:
        async with model.slot([], kv_tokens):
            await release.wait()

    holder = asyncio.create_task(hold(32))  # 8 blocks
    await asyncio.sleep(0)
    big = asyncio.create_task(hold(16))  # waits for room
    await asyncio.sleep(0)
    small = asyncio.create_task(hold(8))  # would fit, waits behind big
    await asyncio.sleep(0)
    assert (model.running, model.waiting) == (1, 2)
    big.cancel()
    await asyncio.sleep(0)
    assert (model.running, model.waiting, model.blocks_in_use) == (2, 0, 10)
    release.set()
    await asyncio.gather(holder, small)
    assert (model.running, model.blocks_in_use) == (0, 0)


async def test_with_shared_prefill_prompts_prefill_one_after_another() -> None:
    now = [100.0]
    profile = ModelProfile(slots=4, shared_prefill=True, **LONG)  # 1000 tokens/s, 20 ms fixed
    model = ModelEngine("m", profile, random.Random(0), clock=lambda: now[0])
    async with contextlib.AsyncExitStack() as stack:
        grants = [
            await stack.enter_async_context(model.slot(tokens(n, f"p{n}"), n + 16))
            for n in (500, 300, 200)
        ]
        # Each waits for the prefills admitted before it, then does its own.
        assert [g.seconds for g in grants] == pytest.approx([0.520, 0.820, 1.020])
    now[0] += 0.6  # the lane is busy until 101.0
    assert await prefill_seconds(model, tokens(100, "q")) == pytest.approx(0.4 + 0.020 + 0.100)
    now[0] += 10  # idle again; a cached prompt occupies no prefill time
    assert await prefill_seconds(model, tokens(496, "p500")) == pytest.approx(0.020)
    assert await prefill_seconds(model, tokens(100, "q")) == pytest.approx(0.020 + 0.004)
    # Per slot (the default), prompts prefill side by side.
    alone = engine(slots=4, **LONG)
    assert [await prefill_seconds(alone, tokens(n, f"p{n}")) for n in (500, 300)] == (
        pytest.approx([0.520, 0.320])
    )
