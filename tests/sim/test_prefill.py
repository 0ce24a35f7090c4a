"""Over HTTP: prefill time that grows with the uncached prompt, the prefix cache each server
keeps, what it reports (usage, /metrics), and servers of different speeds.

Wall-clock assertions are lower bounds (a sleep never ends early) or ratios wide enough for a
busy two-core machine."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson

from swarmgate.sim import text
from tests.sim.helpers import metric

# 3800-odd prompt tokens: at least 0.4 s to prefill at 8000 tokens per second, 5 ms once cached.
SYSTEM = {"role": "system", "content": "You are a careful assistant who cites sources. " * 290}
PREFILL = {"ttft_ms": 5, "tokens_per_second": 2000, "prefill_tokens_per_second": 8000}


def chat(*messages: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": list(messages), "max_tokens": 1, **extra}


def prompt_tokens(body: dict[str, Any]) -> int:
    return len(text.tokenize(text.render_chat(body["messages"])))


async def first_byte(
    http: aiohttp.ClientSession, url: str, body: dict[str, Any]
) -> tuple[float, dict[str, Any]]:
    """Seconds until the stream's headers (they go out with the first token), and its usage."""
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    start = time.monotonic()
    async with http.post(url + "/v1/chat/completions", json=body) as r:
        ttft = time.monotonic() - start
        assert r.status == 200, await r.text()
        events = [line[6:] for line in (await r.text()).splitlines() if line.startswith("data: ")]
    usage: dict[str, Any] = orjson.loads(events[-2])["usage"]
    return ttft, usage


async def scrape(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url + "/metrics") as r:
        return await r.text()


async def test_a_repeated_long_prompt_is_prefilled_once_per_server(
    sim_fleet: Any, http: aiohttp.ClientSession
) -> None:
    servers = [{"name": name, "models": {"m": PREFILL}} for name in ("a", "b")]
    fleet = await sim_fleet({"servers": servers})
    a, b = fleet.urls["a"], fleet.urls["b"]
    body = chat(SYSTEM, {"role": "user", "content": "What is a KV cache?"})
    tokens = prompt_tokens(body)
    assert tokens > 3200  # 0.4 s

    cold, usage = await first_byte(http, a, body)
    assert cold >= 0.4
    assert usage["prompt_tokens"] == tokens
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0}

    warm, usage = await first_byte(http, a, body)
    assert usage["prompt_tokens_details"] == {"cached_tokens": tokens // 16 * 16}
    assert warm < cold / 2

    elsewhere, usage = await first_byte(http, b, body)  # b has never seen the prompt
    assert elsewhere >= 0.4
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0}

    on_a, on_b = await scrape(http, a), await scrape(http, b)
    for name in ("vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total"):
        assert metric(on_a, name, "m") == 2 * tokens
        assert metric(on_b, name, "m") == tokens
    for name in ("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total"):
        assert metric(on_a, name, "m") == tokens // 16 * 16
        assert metric(on_b, name, "m") == 0
    assert metric(on_a, "vllm:prompt_tokens_total", "m") == 2 * tokens
    assert metric(on_a, "vllm:kv_cache_usage_perc", "m") == 0  # cached blocks are free room


async def test_a_follow_up_turn_hits_the_conversation_so_far(
    sim_fleet: Any, http: aiohttp.ClientSession
) -> None:
    fleet = await sim_fleet({"servers": [{"name": "a", "models": {"m": {"ttft_ms": 1}}}]})
    url = fleet.urls["a"]
    turn = [SYSTEM, {"role": "user", "content": "Name three rivers."}]
    await first_byte(http, url, chat(*turn))
    reply = {"role": "assistant", "content": "The Nile, the Amazon and the Danube."}
    follow_up = chat(*turn, reply, {"role": "user", "content": "Which is longest?"})
    _, usage = await first_byte(http, url, follow_up)
    # The first turn's prompt ends with the assistant header, which the follow-up does not
    # repeat at that point: the hit covers the full blocks before it.
    shared = len(text.tokenize(text.render_chat(turn)[: -len("<|assistant|>\n")]))
    cached = usage["prompt_tokens_details"]["cached_tokens"]
    assert shared - 16 < cached <= shared
    assert usage["prompt_tokens"] == prompt_tokens(follow_up)


async def test_the_cache_is_bounded_by_the_kv_capacity(
    sim_fleet: Any, http: aiohttp.ClientSession
) -> None:
    # Each prompt fills 237 blocks (236 full prompt blocks, then the partial one and the
    # output's): with room for 300, the second leaves 63 of the first's, its leading ones.
    model = {"ttft_ms": 1, "prefix_cache": {"capacity_blocks": 300}}
    fleet = await sim_fleet({"servers": [{"name": "a", "models": {"m": model}}]})
    url = fleet.urls["a"]
    prompts = [chat({"role": "system", "content": f"{n} " + SYSTEM["content"]}) for n in (1, 2)]
    assert [prompt_tokens(p) for p in prompts] == [236 * 16 + 2] * 2
    for body in prompts:
        _, usage = await first_byte(http, url, body)
        assert usage["prompt_tokens_details"]["cached_tokens"] == 0
    _, usage = await first_byte(http, url, prompts[1])
    assert usage["prompt_tokens_details"]["cached_tokens"] == 236 * 16
    _, usage = await first_byte(http, url, prompts[0])
    assert usage["prompt_tokens_details"]["cached_tokens"] == (300 - 237) * 16


async def test_without_prefix_caching_usage_has_no_details_and_nothing_hits(
    sim_fleet: Any, http: aiohttp.ClientSession
) -> None:
    model = {**PREFILL, "prefix_cache": {"enabled": False}}
    fleet = await sim_fleet({"servers": [{"name": "a", "models": {"m": model}}]})
    body = chat(SYSTEM)
    for _ in range(2):
        ttft, usage = await first_byte(http, fleet.urls["a"], body)
        assert ttft >= 0.4
        assert "prompt_tokens_details" not in usage
    assert metric(await scrape(http, fleet.urls["a"]), "vllm:prefix_cache_hits_total", "m") == 0


async def test_a_slower_server_takes_proportionally_longer(
    sim_fleet: Any, http: aiohttp.ClientSession
) -> None:
    model = {"ttft_ms": 5, "tokens_per_second": 400, "prefill_tokens_per_second": 32000}
    servers = [
        {"name": "fast", "models": {"m": model}},
        {"name": "slow", "speed": 0.25, "models": {"m": model}},
    ]
    fleet = await sim_fleet({"servers": servers})
    # About 0.12 s of prefill and 0.1 s of decoding at full speed.
    body = chat(SYSTEM, max_tokens=40)

    async def total(url: str) -> float:
        start = time.monotonic()
        async with http.post(url + "/v1/chat/completions", json=body) as r:
            assert r.status == 200
            assert (await r.json())["usage"]["completion_tokens"] == 40
        return time.monotonic() - start

    fast, slow = await total(fleet.urls["fast"]), await total(fleet.urls["slow"])
    assert slow >= 4 * (0.005 + prompt_tokens(body) / 32000 + 40 / 400)
    assert slow > 2 * fast


async def test_with_shared_prefill_concurrent_long_prompts_wait_for_each_other(
    sim_fleet: Any, http: aiohttp.ClientSession
) -> None:
    model = {**PREFILL, "shared_prefill": True, "slots": 4}
    fleet = await sim_fleet({"servers": [{"name": "a", "models": {"m": model}}]})
    bodies = [chat({"role": "system", "content": f"{n} " + SYSTEM["content"]}) for n in (1, 2)]
    alone = prompt_tokens(bodies[0]) / 8000  # about 0.47 s each
    ttfts = await asyncio.gather(*(first_byte(http, fleet.urls["a"], b) for b in bodies))
    # Both got a slot at once; the second's prefill began when the first's ended.
    assert max(t for t, _ in ttfts) >= 2 * alone
