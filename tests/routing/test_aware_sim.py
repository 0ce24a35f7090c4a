"""The aware balancers against simulated servers over HTTP: the scraper reads each engine's
``/metrics``, and prefix-aware routing finds the servers' prefix caches where round robin
does not."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

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
from swarmgate.routing.plan import Router
from swarmgate.routing.scrape import Scraper
from swarmgate.sim import Fleet as SimFleet
from swarmgate.sim import parse_fleet_profile, start_fleet
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
