"""Three gateway processes share one real Redis: limits are exact across them.

A key limited to 100 requests a minute gets 1,000 requests within seconds, spread over the
three: exactly 100 succeed. The same for a concurrency limit (the model server never sees more
than N at once) and a token limit (exactly as many as fit). And a model's capacity holds across
them: its server never sees more than its ``max_concurrent``, and a slot freed on one replica
serves a request waiting on another.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.limits.e2e import Upstream, estimate
from tests.plugins.processes import Gateway, Processes, new_admin_key
from tests.plugins.servers import RedisServer

pytestmark = pytest.mark.redis

TIERS = {
    "hundred": {"rpm": 100},
    "five_at_once": {"concurrent": 5},
    "tokens": {"tpm": 2000},
}


@dataclass
class Replicas:
    gateways: list[Gateway]
    upstream: Upstream

    def create_key(self, tier: str) -> str:
        import urllib.request

        gw = self.gateways[0]
        request = urllib.request.Request(
            gw.url + "/admin/keys",
            data=orjson.dumps({"name": tier, "owner": "o-" + tier, "tier": tier}),
            headers={"authorization": f"Bearer {gw.admin_key}", "content-type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            secret: str = orjson.loads(reply.read())["secret"]
        return secret


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer
) -> Iterator[Replicas]:
    redis_server.flush()
    root: Path = tmp_path_factory.mktemp("replicas")
    procs = Processes(root)
    upstream = Upstream(delay=0.3)
    models = {
        name: {"deployments": [{"url": upstream.url, "max_concurrent": 1000}]}
        for name in ("fast", "slow")
    }
    # Two slots for the whole fleet; a request that finds them taken waits, on any replica.
    models["slow-narrow"] = {
        "deployments": [{"url": upstream.url, "max_concurrent": 2}],
        "queue_timeout": 20,
    }
    config: dict[str, Any] = {
        "models": models,
        "store": {"url": f"sqlite+aiosqlite:///{root / 'shared.db'}"},
        "redis": {"url": redis_server.url},
        "limits": {"tiers": TIERS},
    }
    env = {"SWARMGATE_AUTH__SECRET": "srv-" + secrets.token_hex(20)}
    env["SWARMGATE_ADMIN_KEY"] = new_admin_key()
    try:
        gateways = [procs.gateway(config, env) for _ in range(3)]
        yield Replicas(gateways, upstream)
    finally:
        procs.stop_all()
        upstream.close()
    for gw in gateways:
        assert "Traceback" not in gw.output(), gw.output()


async def fire(
    replicas: Replicas, secret: str, n: int, model: str, concurrency: int, **extra: Any
) -> list[int]:
    """``n`` chat requests, round-robin over the replicas, ``concurrency`` at a time."""
    urls = itertools.cycle(gw.url + "/v1/chat/completions" for gw in replicas.gateways)
    body = orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], **extra})
    headers = {"authorization": f"Bearer {secret}", "content-type": "application/json"}
    statuses: list[int] = []
    gate = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(url: str) -> None:
            async with gate, session.post(url, data=body, headers=headers) as reply:
                await reply.read()
                statuses.append(reply.status)

        await asyncio.gather(*(one(next(urls)) for _ in range(n)))
    return statuses


async def test_exactly_100_of_1000_requests_pass_a_100_rpm_limit(replicas: Replicas) -> None:
    secret = replicas.create_key("hundred")
    loop = asyncio.get_running_loop()
    started = loop.time()
    statuses = await fire(replicas, secret, 1000, "fast", 30)
    assert loop.time() - started < 10
    assert statuses.count(200) == 100
    assert statuses.count(429) == 900


async def test_never_more_than_n_in_flight_across_replicas(replicas: Replicas) -> None:
    secret = replicas.create_key("five_at_once")
    replicas.upstream.reset()
    statuses = await fire(replicas, secret, 60, "slow", 30)
    assert replicas.upstream.peak == 5  # reached, and never passed, on three replicas
    assert statuses.count(200) == replicas.upstream.served
    assert set(statuses) == {200, 429}


async def test_a_token_limit_admits_exactly_what_fits(replicas: Replicas) -> None:
    secret = replicas.create_key("tokens")
    body = {"model": "fast", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}
    prompt, answer = estimate(orjson.dumps(body), 50)
    reserved = prompt + answer  # and used: the upstream answers exactly that much usage
    statuses = await fire(replicas, secret, 300, "fast", 30, max_tokens=50)
    assert statuses.count(200) == 2000 // reserved
    assert statuses.count(429) == 300 - 2000 // reserved


async def test_a_models_capacity_holds_across_replicas_and_waiters_are_served(
    replicas: Replicas,
) -> None:
    secret = replicas.create_key("default")  # unlimited: only the model's capacity applies
    replicas.upstream.reset()
    statuses = await fire(replicas, secret, 24, "slow-narrow", 24)
    assert statuses == [200] * 24  # every one waited for a slot, wherever it was freed
    assert replicas.upstream.peak == 2  # three replicas, and never more than the two slots
