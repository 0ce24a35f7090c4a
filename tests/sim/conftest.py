"""Factories for in-process simulator fleets (port 0 on 127.0.0.1), stopped at teardown."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from swarmgate.sim import Fleet, parse_fleet_profile, start_fleet
from tests.sim.helpers import FAST, StartSim


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
