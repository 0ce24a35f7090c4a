"""Factories for in-process simulator fleets (port 0 on 127.0.0.1), stopped at teardown."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from swarmgate.sim import Fleet, parse_fleet_profile, start_fleet

# Fast defaults so that tests spend their time on behaviour, not on simulated prefill.
FAST = {"ttft_ms": 5, "tokens_per_second": 2000}

StartSim = Callable[..., Awaitable[str]]


@pytest.fixture
async def sim_fleet() -> AsyncIterator[Callable[..., Awaitable[Fleet]]]:
    fleets: list[Fleet] = []

    async def start(raw: dict[str, Any], *, testing: bool = True) -> Fleet:
        fleet = await start_fleet(parse_fleet_profile(raw), testing=testing)
        fleets.append(fleet)
        return fleet

    yield start
    for fleet in fleets:
        await fleet.stop()


@pytest.fixture
def sim(sim_fleet: Callable[..., Awaitable[Fleet]]) -> StartSim:
    """``await sim({"model": {...}}, testing=..., seed=...)`` -> the server's base URL.
    Each model's profile starts from ``FAST``."""

    async def start(
        models: dict[str, dict[str, Any]], *, testing: bool = True, seed: int = 0
    ) -> str:
        profiles = {name: {**FAST, **profile} for name, profile in models.items()}
        raw = {"seed": seed, "servers": [{"name": "sim", "port": 0, "models": profiles}]}
        fleet = await sim_fleet(raw, testing=testing)
        return fleet.urls["sim"]

    return start


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


def metric(text: str, name: str, model: str) -> float:
    """One sample from Prometheus text, e.g. ``metric(t, "vllm:num_requests_running", "m")``."""
    prefix = f'{name}{{model_name="{model}"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    raise AssertionError(f"{prefix!r} not in /metrics")
