"""The aware balancers against simulated servers over HTTP: the scraper reads each engine's
``/metrics``, and prefix-aware routing finds the servers' prefix caches where round robin
does not."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from swarmgate.api.app import Gateway
from swarmgate.api.v1 import Inference
from swarmgate.config import parse_settings
from swarmgate.observability.metrics import Metrics
from swarmgate.pipeline.accounting import Accounting
from swarmgate.pipeline.call import Caller
from swarmgate.pipeline.queueing import Queueing
from swarmgate.pipeline.stages import Admission
from swarmgate.routing.aware import aware_balancer
from swarmgate.routing.balancers import Balancer, WeightedRoundRobin
from swarmgate.routing.fleet import Fleet
from swarmgate.routing.hints import PlacementHints
from swarmgate.routing.plan import Router
from swarmgate.routing.prefix import PrefixAware
from swarmgate.routing.resource import ResourceAware
from swarmgate.routing.scrape import Scraper
from swarmgate.sim import Fleet as SimFleet
from swarmgate.sim import parse_fleet_profile, start_fleet
from swarmgate.store.events import RedisBus
from swarmgate.upstream.exposition import HttpExpositions
from swarmgate.upstream.transport import HttpTransport
from tests.pipeline.fleets import Answer, LetIn

MODEL = {
    "ttft_ms": 1,
    "tokens_per_second": 5000,
    "prefix_cache": {"block_tokens": 16, "capacity_blocks": 100_000},
}


@pytest.fixture
async def sims() -> AsyncIterator[SimFleet]:
    servers = [
        {"name": name, "port": 0, "metrics": kind, "models": {"m": MODEL}}
        for name, kind in (("s0", "vllm"), ("s1", "sglang"), ("s2", "llamacpp"))
    ]
    fleet = await start_fleet(parse_fleet_profile({"seed": 1, "servers": servers}), testing=True)
    yield fleet
    await fleet.stop()


def _settings(urls: list[str], **extra: Any) -> Any:
    deployments = [{"url": u} for u in urls]
    return parse_settings({"models": {"m": {"deployments": deployments}}, **extra}, {})


async def test_the_scraper_reads_every_engines_page_over_http(sims: SimFleet) -> None:
    settings = _settings(list(sims.urls.values()), scrape={"interval": 1})
    fleet = Fleet(settings)
    scraper = Scraper(fleet, HttpExpositions(), settings.scrape)
    try:
        assert await scraper.scrape() == 3
    finally:
        await scraper.stop()
    loads = [s.load for s in fleet.snapshot.pools["m"].members]
    assert all(load is not None and (load.waiting, load.running) == (0, 0) for load in loads)
    assert [load.kv_usage is None for load in loads if load] == [False, False, True]


SYSTEMS = [
    f"You are agent {i} of the help desk. " + f"Rule {i}: be brief, be kind, cite the manual. " * 60
    for i in range(3)
]


async def _cached_share(urls: list[str], balancer: Balancer) -> float:
    settings = _settings(urls)
    fleet = Fleet(settings)
    fleet.snapshot.pools["m"].balancer = balancer
    metrics = Metrics()
    transport = HttpTransport()
    inference = Inference(
        LetIn(),
        fleet,
        Admission(settings.limits, metrics=metrics),
        Router(),
        Caller(transport, Queueing(settings.limits, metrics)),
        Accounting(metrics),
        1 << 20,
    )
    prompt = cached = 0
    try:
        for round_ in range(3):
            for user, system in enumerate(SYSTEMS):
                body = {
                    "model": "m",
                    "max_tokens": 2,
                    "messages": [
                        {"role": "system", "content": system},
                        {"role": "user", "content": f"user {user} asks question {round_}"},
                    ],
                }
                answer = await _post(inference, body)
                assert answer.status == 200, answer.body
                usage = orjson.loads(answer.body)["usage"]
                prompt += usage["prompt_tokens"]
                cached += usage.get("prompt_tokens_details", {}).get("cached_tokens", 0)
    finally:
        await transport.close()
    return cached / prompt


async def _post(inference: Inference, body: dict[str, Any]) -> Answer:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": [(b"x-request-id", b"rid")],
        "client": ("127.0.0.1", 5000),
    }
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        assert not sent
        sent = True
        return {"type": "http.request", "body": orjson.dumps(body)}

    answer = Answer()
    await inference(scope, receive, answer.send)
    return answer


async def test_prefix_aware_routing_finds_the_cache_more_often_than_round_robin() -> None:
    # Two fresh servers per run, so that one run's cache does not serve the other.
    async def run(balancer: Balancer) -> float:
        servers = [{"name": f"s{i}", "port": 0, "models": {"m": MODEL}} for i in range(2)]
        sims = await start_fleet(parse_fleet_profile({"seed": 2, "servers": servers}), testing=True)
        try:
            return await _cached_share(list(sims.urls.values()), balancer)
        finally:
            await sims.stop()

    # Three system prompts over two servers: round robin sends each prompt to the other
    # server every round, so each misses twice; prefix-aware routing keeps each on one.
    round_robin = await run(WeightedRoundRobin())
    prefix = await run(aware_balancer("prefix_aware"))
    assert prefix >= 1.5 * round_robin
    assert prefix > 0.5


async def test_three_replicas_sharing_redis_keep_the_hit_rate_of_one(redis_url: str) -> None:
    # Each round of requests goes to the next of three gateway replicas (as a load balancer
    # in front of them might), so every prompt meets replicas that have not served it; each
    # replica's placements reach the others through Redis before the next request (a bounded
    # wait for the hint). Each replica's tie-breaks are seeded: the run without hints loses
    # the same hits every time.

    servers = [{"name": f"s{i}", "port": 0, "models": {"m": MODEL}} for i in range(2)]

    async def run(replicas: int, share: bool) -> float:
        sims = await start_fleet(parse_fleet_profile({"seed": 3, "servers": servers}), testing=True)
        urls = list(sims.urls.values())
        gateways, buses, hints, transports = [], [], [], []
        try:
            for j in range(replicas):
                settings = _settings(urls)
                fleet = Fleet(settings)
                fallback = ResourceAware(rng=random.Random(j))
                fleet.snapshot.pools["m"].balancer = PrefixAware(fallback)
                if share:
                    bus = RedisBus(redis_url)
                    h = PlacementHints(fleet, bus, interval=0.01)
                    await bus.start()
                    h.attach()
                    h.start()
                    buses.append(bus)
                    hints.append(h)
                metrics = Metrics()
                transport = HttpTransport()
                transports.append(transport)
                gateways.append(
                    Inference(
                        LetIn(),
                        fleet,
                        Admission(settings.limits, metrics=metrics),
                        Router(),
                        Caller(transport, Queueing(settings.limits, metrics)),
                        Accounting(metrics),
                        1 << 20,
                    )
                )
            prompt = cached = served = 0
            for round_ in range(4):
                for user, system in enumerate(SYSTEMS):
                    body = {
                        "model": "m",
                        "max_tokens": 2,
                        "messages": [
                            {"role": "system", "content": system},
                            {"role": "user", "content": f"user {user} asks question {round_}"},
                        ],
                    }
                    answer = await _post(gateways[round_ % replicas], body)
                    served += 1
                    assert answer.status == 200, answer.body
                    usage = orjson.loads(answer.body)["usage"]
                    prompt += usage["prompt_tokens"]
                    cached += usage.get("prompt_tokens_details", {}).get("cached_tokens", 0)
                    if share and replicas > 1:
                        # Every other replica has heard this placement.
                        async with asyncio.timeout(5):
                            while sum(h.received for h in hints) < served * (replicas - 1):
                                await asyncio.sleep(0.005)
            return cached / prompt
        finally:
            for h in hints:
                await h.stop()
            for bus in buses:
                await bus.close()
            for transport in transports:
                await transport.close()
            await sims.stop()

    one = await run(1, share=False)
    shared = await run(3, share=True)
    alone = await run(3, share=False)
    assert shared >= 0.95 * one
    assert alone < 0.95 * one  # without the hints, three replicas do lose hits


async def test_the_gateway_runs_the_scraper_from_startup_to_shutdown(
    sims: SimFleet, tmp_path: Path
) -> None:
    raw = {
        "models": {"m": {"deployments": [{"url": u} for u in sims.urls.values()]}},
        "store": {"url": f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}"},
        "audit": {"spool_path": str(tmp_path / "audit.spool")},
        "auth": {"secret": "s" * 40},
        "scrape": {"interval": 0.05},
    }
    gw = Gateway(parse_settings(raw, {}))
    await gw.startup()
    try:
        members = gw.fleet.snapshot.pools["m"].members
        async with asyncio.timeout(10):  # a bounded wait for the first round
            while any(m.load is None for m in members):
                await asyncio.sleep(0.01)
    finally:
        await gw.shutdown()
    assert gw.scraper._task is None
