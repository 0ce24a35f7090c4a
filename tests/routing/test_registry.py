"""The registry: the config file's fleet with the run-time changes applied, validated like the
file, stored, and a drained deployment skipped by the plan."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from swarmgate.config import parse_settings
from swarmgate.errors import BadRequest, ConfigError, Conflict, NoDeployment, NotFound
from swarmgate.limits.queue import TierPolicy
from swarmgate.routing.balancers import RoutingFacts
from swarmgate.routing.fleet import DeploymentState, Fleet
from swarmgate.routing.plan import Plan
from swarmgate.routing.registry import Registry, effective, parse_worker
from swarmgate.store.deployments import ACTIVE, DRAINING, REMOVED, DeploymentStore, FleetChange
from swarmgate.store.events import LocalBus
from swarmgate.store.sql import Database

FACTS = RoutingFacts("m")


def _settings(*urls: str) -> Any:
    return parse_settings({"models": {"m": {"deployments": [{"url": u} for u in urls]}}}, {})


def _names(settings: Any) -> list[str]:
    return [s.name for s in Fleet(settings).snapshot.states()]


def test_effective_applies_additions_and_removals_keeping_names() -> None:
    settings = _settings("http://h:1", "http://h:1", "http://h:2")
    assert _names(settings) == ["m@h:1#0", "m@h:1#1", "m@h:2"]
    changes = [
        FleetChange("m@h:1#0", "m", None, REMOVED, 1, 1),
        FleetChange("extra", "m", {"url": "http://h:3", "max_concurrent": 2}, ACTIVE, 2, 2),
        FleetChange("gone", "m", {"url": "http://h:4"}, REMOVED, 3, 3),
        FleetChange("other", "nope", {"url": "http://h:5"}, ACTIVE, 4, 4),  # model not configured
        FleetChange("keyed", "m", {"url": "http://h:6", "api_key_env": "K"}, ACTIVE, 5, 5),
    ]
    applied = effective(settings, changes, {})
    # The other "#1" keeps its name although its twin is gone; "keyed" lacks its variable.
    assert _names(applied) == ["m@h:1#1", "m@h:2", "extra"]
    assert Fleet(applied).resolve("m").members[2].max_concurrent == 2
    keyed = effective(settings, changes, {"K": "secret"})
    assert Fleet(keyed).resolve("m").members[-1].deployment.api_key == "secret"


def test_a_model_never_loses_its_last_deployment() -> None:
    settings = _settings("http://h:1")
    applied = effective(settings, [FleetChange("m@h:1", "m", None, REMOVED, 1, 1)], {})
    assert _names(applied) == ["m@h:1"]


def _file_problems(settings_raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_settings(settings_raw, {})
    return info.value.problems


def test_a_worker_is_validated_with_check_configs_messages() -> None:
    settings = _settings("http://h:1")
    bad = {"url": "ftp://x", "max_concurrent": 0, "wieght": 2}
    with pytest.raises(BadRequest) as info:
        parse_worker(settings, {"model": "m", **bad}, {})
    in_file = _file_problems({"models": {"m": {"deployments": [{"url": "http://h:1"}, bad]}}})
    assert info.value.message.split("; ") == in_file
    with pytest.raises(BadRequest, match=r"deployments\[1\]\.api_key_env: \$K is not set"):
        parse_worker(settings, {"model": "m", "url": "http://h:2", "api_key_env": "K"}, {})
    with pytest.raises(BadRequest, match="not a configured model"):
        parse_worker(settings, {"model": "x", "url": "http://h:2"}, {})
    model, spec, config = parse_worker(
        settings, {"model": "m", "url": "http://h:2", "upstream_model": "llama"}, {}
    )
    assert (model, spec, config.model) == ("m", {"url": "http://h:2", "model": "llama"}, "llama")


@pytest_asyncio.fixture
async def registry(database: Database) -> AsyncIterator[Registry]:
    settings = _settings("http://h:1", "http://h:2")
    registry = Registry(settings, Fleet(settings), DeploymentStore(database), LocalBus(), {})
    yield registry
    # Its own changes reach it as events too: the reads they start end before the store does.
    await registry.stop()


async def test_drain_is_skipped_by_the_plan_and_restart_readmits(registry: Registry) -> None:
    a, b = registry.fleet.resolve("m").members
    lease = a.lease()
    await registry.drain(a.name, "k1")
    assert a.draining and not a.has_capacity and a.in_flight == 1
    pool = registry.fleet.resolve("m")
    assert [Plan(pool, FACTS).next() for _ in range(3)] == [b, b, b]
    assert pool.usable == 1
    b.draining = True
    with pytest.raises(NoDeployment):
        Plan(pool, FACTS).next()
    b.draining = False
    # Stored: a new registry over the same store drains it too.
    other = Registry(registry.settings, Fleet(registry.settings), registry.store, LocalBus(), {})
    await other.reload()
    assert [s.draining for s in other.fleet.snapshot.states()] == [True, False]

    lease.release()
    state, left = await registry.restart(a.name, "k1", timeout=1)
    assert (state is a, left, a.draining) == (True, 0, False)
    assert await registry.store.all() == []  # a deployment of the file: nothing left to store


async def test_a_reload_without_news_keeps_the_pools(registry: Registry) -> None:
    pool = registry.fleet.resolve("m")
    await registry.reload()
    assert registry.fleet.resolve("m") is pool
    await registry.store.put(FleetChange("m@h:1", "m", None, DRAINING, 1, 1))  # another replica
    await registry.reload()
    assert registry.fleet.resolve("m") is not pool
    assert [s.draining for s in registry.fleet.snapshot.states()] == [True, False]


async def test_restart_waits_for_in_flight_within_its_bound(registry: Registry) -> None:
    a = registry.fleet.resolve("m").members[0]
    lease = a.lease()
    _, left = await registry.restart(a.name, None, timeout=0.1)
    assert left == 1  # still in flight when the wait ended: readmitted anyway
    lease.release()
    assert not a.draining


async def test_add_and_remove_are_stored(registry: Registry) -> None:
    state = await registry.add({"model": "m", "url": "http://h:3", "name": "extra"}, "k1")
    assert [s.name for s in registry.fleet.snapshot.states()] == ["m@h:1", "m@h:2", "extra"]
    assert registry.source("extra") == "api" and registry.source("m@h:1") == "config"
    with pytest.raises(Conflict):
        await registry.add({"model": "m", "url": "http://h:3", "name": "extra"}, "k1")
    removed, left = await registry.remove("extra", "k1", timeout=1)
    assert (removed is state, left) == (True, 0)
    await registry.remove("m@h:1", "k1", timeout=1)
    assert [s.name for s in registry.fleet.snapshot.states()] == ["m@h:2"]
    assert [(c.name, c.state) for c in await registry.store.all()] == [("m@h:1", REMOVED)]
    with pytest.raises(Conflict, match="last worker"):
        await registry.remove("m@h:2", "k1", timeout=1)
    with pytest.raises(NotFound):
        await registry.drain("extra", "k1")
    # A config reload keeps the changes: the file's deployment stays removed.
    registry.rebase(_settings("http://h:1", "http://h:2", "http://h:9"))
    assert [s.name for s in registry.fleet.snapshot.states()] == ["m@h:2", "m@h:9"]


async def test_a_released_slot_of_a_drained_deployment_is_not_handed_over() -> None:
    settings = _settings("http://h:1", "http://h:2")
    a, b = Fleet(settings).resolve("m").members
    lease = a.lease()
    future: asyncio.Future[DeploymentState] = asyncio.get_running_loop().create_future()
    waiter = a.queue.enter(TierPolicy("free", 10), "k", 5, future, 0)
    assert waiter is not None
    a.draining = True
    lease.release()  # the waiter must not get the drained deployment's slot
    assert (future.done(), a.in_flight, a.queue.waiting) == (False, 0, 1)
    b.lease().release()  # another deployment's slot: handed over
    assert future.result() is b
