"""A real gateway and simulator at twice the fleet's capacity: the enterprise key keeps its
latency while free keys queue and are refused with 503 + Retry-After.

Simulated generations take ~200 ms, so the gateway's own CPU time (well under a millisecond a
request) and a noisy machine barely move the figures; both p99s are measured in this test,
with the same clients, one phase after the other.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from tests.auth.e2e import create_key
from tests.plugins.processes import Gateway, Sim

CAPACITY = 4  # the deployment's max_concurrent
MODEL = {
    "ttft_ms": 200,
    "jitter_ms": 0,
    "tokens_per_second": 2000,
    "max_tokens_default": 2,
    "slots": 2 * CAPACITY,  # the simulator itself never queues
    "prefix_cache": {"enabled": False},  # the same prompt must not get faster
}
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@dataclass
class Load:
    latencies: list[float] = field(default_factory=list)  # of the 200s
    statuses: list[int] = field(default_factory=list)
    refusals: list[tuple[str | None, dict[str, object]]] = field(default_factory=list)


async def worker(http: aiohttp.ClientSession, url: str, key: str, until: float, load: Load) -> None:
    headers = {"authorization": f"Bearer {key}"}
    while time.monotonic() < until:
        started = time.perf_counter()
        async with http.post(url + "/v1/chat/completions", json=BODY, headers=headers) as r:
            body = await r.json()
            elapsed = time.perf_counter() - started
            load.statuses.append(r.status)
            if r.status == 200:
                load.latencies.append(elapsed)
            else:
                load.refusals.append((r.headers.get("retry-after"), body))
                await asyncio.sleep(0.1)  # a client backing off a little, not the full hint


async def run(
    http: aiohttp.ClientSession, url: str, keys: list[tuple[str, Load]], seconds: float
) -> None:
    until = time.monotonic() + seconds
    await asyncio.gather(*(worker(http, url, key, until, load) for key, load in keys))


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[math.ceil(0.99 * len(ordered)) - 1]


async def test_enterprise_keeps_its_p99_at_twice_capacity_while_free_queues(
    sim_factory: Callable[..., Sim], gateway_factory: Callable[..., Gateway]
) -> None:
    sim = sim_factory({"m": MODEL})
    gw = gateway_factory(
        {
            "models": {
                "m": {
                    "queue_timeout": 2,
                    "deployments": [{"url": sim.url, "max_concurrent": CAPACITY}],
                }
            },
            "limits": {
                # The fleet's capacity alone: these tiers' own rates and concurrency are off
                # (the shipped free tier's 10 per minute would refuse the flood with 429s).
                "tiers": {"free": {"priority": 0}, "enterprise": {"priority": 20}},
                "max_share": {"free": 0.5},
                "queue": {"free": {"max_wait": 0.5, "max_length": 2}},
            },
        }
    )
    _, enterprise = create_key(gw, tier="enterprise")
    free = [create_key(gw, tier="free")[1] for _ in range(3)]
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        await run(http, gw.url, [(enterprise, Load())], 0.5)  # warm the key cache, connections
        idle = Load()
        await run(http, gw.url, [(enterprise, idle)] * 2, 4.0)
        busy, crowd = Load(), Load()
        # Six free clients and two enterprise ones: twice the deployment's four slots.
        flood = asyncio.create_task(run(http, gw.url, [(k, crowd) for k in free * 2], 6.0))
        await asyncio.sleep(0.5)  # free saturates its share and queues first
        await run(http, gw.url, [(enterprise, busy)] * 2, 5.0)
        await flood
        async with http.get(gw.url + "/metrics") as r:
            metrics = await r.text()

    assert set(idle.statuses) == set(busy.statuses) == {200}
    assert len(idle.latencies) >= 30 and len(busy.latencies) >= 30
    assert p99(busy.latencies) <= 1.2 * p99(idle.latencies), (
        f"enterprise p99 {p99(busy.latencies):.3f} s loaded, {p99(idle.latencies):.3f} s idle"
    )
    # Free keys were served, queued (waited past a generation's time) and were refused.
    assert crowd.statuses.count(200) >= 10
    assert max(crowd.latencies) > 0.3
    assert crowd.refusals and set(crowd.statuses) == {200, 503}
    for retry_after, body in crowd.refusals:
        assert retry_after is not None and int(retry_after) >= 1
        error = body["error"]
        assert isinstance(error, dict) and error["code"] == "no_deployment_available"
        assert error["type"] == "api_error" and "retry later" in str(error["message"])
    assert 'gateway_queue_rejected_total{model="m",reason="full",tier="free"}' in metrics
    assert 'gateway_queue_wait_seconds_count{tier="free"}' in metrics
    assert 'gateway_queue_wait_seconds_count{tier="enterprise"}' not in metrics
