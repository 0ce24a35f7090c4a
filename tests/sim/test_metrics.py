"""``/metrics`` under vLLM's, SGLang's or llama.cpp's names: the load and prefix-cache figures a
resource-aware balancer scrapes, each in the form the real server exports it."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from swarmgate.errors import ConfigError
from swarmgate.sim import parse_fleet_profile
from tests.sim.helpers import FAST, metric

SYSTEM = {"role": "system", "content": "Answer in French, briefly and politely. " * 40}
BODY = {"model": "m", "messages": [SYSTEM, {"role": "user", "content": "hi"}], "max_tokens": 2}

# Per kind: (running, waiting, kv usage or None, prompt tokens, cached tokens, hit rate or None)
NAMES: dict[str, tuple[str, str, str | None, str, str | None, str | None]] = {
    "vllm": (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:prompt_tokens_total",
        "vllm:prefix_cache_hits_total",
        None,
    ),
    "sglang": (
        "sglang:num_running_reqs",
        "sglang:num_queue_reqs",
        "sglang:token_usage",
        "sglang:prompt_tokens_total",
        "sglang:cached_tokens_total",
        "sglang:cache_hit_rate",
    ),
    "llamacpp": (
        "llamacpp:requests_processing",
        "llamacpp:requests_deferred",
        None,
        "llamacpp:prompt_tokens_total",
        None,
        None,
    ),
}


async def scrape(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url + "/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        return await r.text()


async def chat(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> dict[str, Any]:
    async with http.post(url + "/v1/chat/completions", json=body) as r:
        assert r.status == 200
        usage: dict[str, Any] = (await r.json())["usage"]
        return usage


@pytest.mark.parametrize("kind", sorted(NAMES))
async def test_each_kind_reports_load_and_the_prefix_cache_under_its_own_names(
    sim_fleet: Any, http: aiohttp.ClientSession, kind: str
) -> None:
    model = {**FAST, "slots": 1, "ttft_ms": 300}
    fleet = await sim_fleet({"servers": [{"name": "s", "metrics": kind, "models": {"m": model}}]})
    url = fleet.urls["s"]
    label = None if kind == "llamacpp" else "m"
    running, waiting, kv, prompt, cached, rate = NAMES[kind]

    requests = [asyncio.create_task(chat(http, url, BODY)) for _ in range(3)]
    text = await scrape(http, url)
    while metric(text, waiting, label) < 2:  # all three have arrived: one runs, two wait
        assert not any(r.done() for r in requests)
        await asyncio.sleep(0.01)
        text = await scrape(http, url)
    assert metric(text, running, label) == 1
    if kv is not None:
        assert 0 < metric(text, kv, label) <= 1
    usages = await asyncio.gather(*requests)

    text = await scrape(http, url)
    assert (metric(text, running, label), metric(text, waiting, label)) == (0, 0)
    tokens = usages[0]["prompt_tokens"]
    hit = usages[1]["prompt_tokens_details"]["cached_tokens"]
    assert hit == tokens // 16 * 16 > 0
    if kind == "llamacpp":  # llama.cpp counts the prompt tokens it evaluated
        assert metric(text, prompt, label) == 3 * tokens - 2 * hit
    else:
        assert metric(text, prompt, label) == 3 * tokens
    if cached is not None:
        assert metric(text, cached, label) == 2 * hit
    if rate is not None:
        assert metric(text, rate, label) == pytest.approx(2 * hit / (3 * tokens))
    other = {"vllm:", "sglang:", "llamacpp:"} - {f"{kind}:"}
    assert not any(line.startswith(tuple(other)) for line in text.splitlines())


def test_a_server_with_llamacpp_metrics_serves_one_model() -> None:
    server = {"name": "s", "metrics": "llamacpp", "models": {"a": {}, "b": {}}}
    with pytest.raises(ConfigError, match="one model"):
        parse_fleet_profile({"servers": [server]})
    with pytest.raises(ConfigError, match="metrics"):
        parse_fleet_profile({"servers": [{**server, "metrics": "tgi"}]})
