"""A simulated server over HTTP: routes, errors, pacing, queueing, metrics, prefix cache."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from tests.sim.helpers import StartSim, metric

CHAT = [{"role": "user", "content": "hello"}]


async def post(http: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any]:
    async with http.post(url, json=body) as r:
        assert r.headers["X-Sim-Server"] == "sim"
        return r.status, await r.json(content_type=None)


async def test_health_and_server_header(sim: StartSim, http: aiohttp.ClientSession) -> None:
    url = await sim({"m": {}})
    async with http.get(url + "/health") as r:
        assert r.status == 200
        assert await r.json() == {"status": "ok"}
        assert r.headers["X-Sim-Server"] == "sim"
    async with http.get(url + "/nowhere") as r:
        assert r.status == 404
        assert r.headers["X-Sim-Server"] == "sim"
        assert (await r.json())["error"]["type"] == "invalid_request_error"
    async with http.get(url + "/v1/chat/completions") as r:
        assert r.status == 405
        assert "error" in await r.json()


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "nope", "messages": CHAT}, 404, "model"),
        ({"messages": CHAT}, 400, "model"),
        ({"model": "m"}, 400, "messages"),
        ({"model": "m", "messages": CHAT, "max_tokens": 0}, 400, "max_tokens"),
        ({"model": "m", "messages": CHAT, "max_tokens": "5"}, 400, "max_tokens"),
        ({"model": "m", "messages": CHAT, "stream": "yes"}, 400, "stream"),
        ({"model": "m", "messages": CHAT, "seed": 1.5}, 400, "seed"),
        ({"model": "m", "messages": CHAT, "max_tokens": 10_000}, 400, "max_tokens"),
        (
            {"model": "m", "messages": CHAT, "stream": True, "stream_options": 1},
            400,
            "stream_options",
        ),
    ],
)
async def test_bad_requests_get_openai_errors(
    sim: StartSim, http: aiohttp.ClientSession, body: Any, status: int, param: str
) -> None:
    url = await sim({"m": {"max_model_len": 4096}})
    got, error = await post(http, url + "/v1/chat/completions", body)
    assert got == status
    assert set(error["error"]) >= {"message", "type", "param", "code"}
    assert error["error"]["param"] == param


async def test_malformed_json_and_non_objects_are_400(
    sim: StartSim, http: aiohttp.ClientSession
) -> None:
    url = await sim({"m": {}})
    for data in (b"{not json", b"[1, 2]", b""):
        async with http.post(url + "/v1/chat/completions", data=data) as r:
            assert r.status == 400
            assert (await r.json())["error"]["code"] == "invalid_json"


async def test_unknown_fields_are_ignored(sim: StartSim, http: aiohttp.ClientSession) -> None:
    url = await sim({"m": {}})
    body = {
        "model": "m",
        "messages": CHAT,
        "max_tokens": 2,
        "temperature": 0.2,
        "tools": [],
        "frobnicate": {"x": 1},
        "n": 1,
        "user": "u",
    }
    status, out = await post(http, url + "/v1/chat/completions", body)
    assert status == 200
    assert out["usage"]["completion_tokens"] == 2


async def test_tokens_are_paced_at_tokens_per_second(
    sim: StartSim, http: aiohttp.ClientSession
) -> None:
    url = await sim({"m": {"ttft_ms": 100, "tokens_per_second": 50}})
    body = {"model": "m", "messages": CHAT, "max_tokens": 10, "stream": True}
    start = time.monotonic()
    arrivals = []
    async with http.post(url + "/v1/chat/completions", json=body) as r:
        async for line in r.content:
            if line.startswith(b"data: {"):
                arrivals.append(time.monotonic() - start)
    assert len(arrivals) == 11  # role chunk + 10 tokens
    assert arrivals[0] >= 0.1  # headers and first chunk only after prefill
    assert arrivals[-1] >= 0.1 + 9 / 50
    start = time.monotonic()
    status, _ = await post(http, url + "/v1/chat/completions", {**body, "stream": False})
    assert status == 200
    assert time.monotonic() - start >= 0.1 + 10 / 50


async def test_metrics_show_running_and_waiting_with_one_slot(
    sim: StartSim, http: aiohttp.ClientSession
) -> None:
    url = await sim({"m": {"slots": 1, "ttft_ms": 0, "tokens_per_second": 40}})
    body = {"model": "m", "messages": CHAT, "max_tokens": 8}
    requests = [
        asyncio.create_task(post(http, url + "/v1/chat/completions", body)) for _ in range(3)
    ]
    seen: set[tuple[float, float]] = set()
    while not all(t.done() for t in requests):
        async with http.get(url + "/metrics") as r:
            assert r.headers["Content-Type"].startswith("text/plain")
            text = await r.text()
        running = metric(text, "vllm:num_requests_running", "m")
        waiting = metric(text, "vllm:num_requests_waiting", "m")
        assert running <= 1
        seen.add((running, waiting))
        if running:
            assert 0 < metric(text, "vllm:kv_cache_usage_perc", "m") <= 1
        await asyncio.sleep(0.02)
    assert all(status == 200 for status, _ in await asyncio.gather(*requests))
    assert {(1.0, 2.0), (1.0, 1.0)} <= seen
    async with http.get(url + "/metrics") as r:
        text = await r.text()
    assert metric(text, "vllm:num_requests_running", "m") == 0
    assert metric(text, "vllm:num_requests_waiting", "m") == 0
    assert metric(text, "vllm:kv_cache_usage_perc", "m") == 0
    assert metric(text, "vllm:generation_tokens_total", "m") == 24
    assert metric(text, "vllm:request_success_total", "m") == 3
    assert "# TYPE vllm:prompt_tokens_total counter" in text


async def test_queue_full_is_503_with_retry_after(
    sim: StartSim, http: aiohttp.ClientSession
) -> None:
    url = await sim({"m": {"slots": 1, "max_queue": 1, "ttft_ms": 300}})
    body = {"model": "m", "messages": CHAT, "max_tokens": 1}
    first = [asyncio.create_task(post(http, url + "/v1/chat/completions", body)) for _ in range(2)]
    waiting = 0.0
    while waiting < 1:
        await asyncio.sleep(0.01)
        async with http.get(url + "/metrics") as r:
            waiting = metric(await r.text(), "vllm:num_requests_waiting", "m")
    async with http.post(url + "/v1/chat/completions", json=body) as r:
        assert r.status == 503
        assert r.headers["Retry-After"] == "1"
        assert (await r.json())["error"]["type"] == "api_error"
    assert [s for s, _ in await asyncio.gather(*first)] == [200, 200]


async def test_prefix_cache_hit_lowers_ttft_and_counts(
    sim: StartSim, http: aiohttp.ClientSession
) -> None:
    profile = {"ttft_ms": 400, "prefix_cache": {"block_tokens": 4, "hit_ttft_ms": 0}}
    url = await sim({"m": profile})
    system = {"role": "system", "content": "You are a helpful assistant. " * 40}
    body = {"model": "m", "messages": [system, *CHAT], "max_tokens": 1}

    async def timed() -> float:
        start = time.monotonic()
        status, _ = await post(http, url + "/v1/chat/completions", body)
        assert status == 200
        return time.monotonic() - start

    cold = await timed()
    warm = await timed()
    assert cold >= 0.4
    assert warm < cold - 0.2
    async with http.get(url + "/metrics") as r:
        text = await r.text()
    queries = metric(text, "vllm:prefix_cache_queries_total", "m")
    hits = metric(text, "vllm:prefix_cache_hits_total", "m")
    prompt = metric(text, "vllm:prompt_tokens_total", "m")
    assert queries == prompt
    assert queries / 2 - 4 < hits <= queries / 2  # all full blocks of the second prompt


async def test_two_servers_in_one_fleet_are_independent(
    sim_fleet: Any, http: aiohttp.ClientSession
) -> None:
    fast = {"ttft_ms": 1, "tokens_per_second": 1000}
    fleet = await sim_fleet(
        {"servers": [{"name": "a", "models": {"m": fast}}, {"name": "b", "models": {"m": fast}}]}
    )
    assert fleet.urls["a"] != fleet.urls["b"]
    async with http.post(
        fleet.urls["a"] + "/v1/completions", json={"model": "m", "prompt": "x"}
    ) as r:
        assert r.headers["X-Sim-Server"] == "a"
    async with http.get(fleet.urls["b"] + "/metrics") as r:
        assert metric(await r.text(), "vllm:prompt_tokens_total", "m") == 0


async def test_holds_a_thousand_concurrent_streams(sim: StartSim) -> None:
    url = await sim({"m": {"slots": 1000, "ttft_ms": 50, "tokens_per_second": 10}})
    # Streams long enough to outlast the client's ramp-up even on a loaded machine.
    body = {"model": "m", "messages": CHAT, "max_tokens": 1000, "stream": True}
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        leave = asyncio.Event()
        first_chunks: list[bytes] = []

        async def one() -> None:
            async with http.post(url + "/v1/chat/completions", json=body) as r:
                first_chunks.append(await r.content.readline())
                await leave.wait()

        async def running() -> float:
            async with http.get(url + "/metrics") as r:
                return metric(await r.text(), "vllm:num_requests_running", "m")

        streams = [asyncio.create_task(one()) for _ in range(1000)]
        while await running() < 1000:
            await asyncio.sleep(0.05)
        while len(first_chunks) < 1000:
            await asyncio.sleep(0.05)
        async with http.get(url + "/metrics") as r:
            generated = metric(await r.text(), "vllm:generation_tokens_total", "m")
        await asyncio.sleep(0.3)
        async with http.get(url + "/metrics") as r:
            text = await r.text()
        # Every stream keeps its pace (10 tokens/s each) while all are open.
        assert metric(text, "vllm:generation_tokens_total", "m") - generated >= 1000
        leave.set()
        await asyncio.gather(*streams)
        # Clients that leave mid-stream free their slots.
        while await running() > 0:
            await asyncio.sleep(0.05)
    assert all(c.startswith(b"data: {") for c in first_chunks)
