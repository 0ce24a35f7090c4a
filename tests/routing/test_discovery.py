"""DNS discovery's logic over the resolver's twin: the deployments a ``discover`` entry
expands to, a failed lookup keeping the last answer (logged once per outage), the bound on
addresses, a reload of the entries, and the fleet swapped without losing a request in flight.
(tests/routing/test_dns.py: the same against a real DNS server.)"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from swarmgate.config import parse_settings
from swarmgate.errors import ConfigError
from swarmgate.routing.discovery import Discovery, Found, Target, expand, targets
from swarmgate.routing.dns import MemoryResolver
from swarmgate.routing.fleet import Fleet
from swarmgate.routing.registry import Registry
from swarmgate.store.deployments import DeploymentStore
from swarmgate.store.events import LocalBus
from swarmgate.store.sql import Database


def settings(*deployments: dict[str, Any], **extra: Any) -> Any:
    return parse_settings(
        {"models": {"m": {"deployments": list(deployments)}}, **extra}, environ={}
    )


A = {"discover": {"dns": "llm.test", "port": 8000, "interval": 0.05}}


def test_a_discover_entry_expands_to_one_deployment_per_address() -> None:
    s = settings(A, {"url": "http://static:9000"})
    (target,) = targets(s)
    answers = {target: (Found("10.0.0.5", "10.0.0.5", 8000), Found("fd00::7", "fd00::7", 8000))}
    fleet = Fleet(expand(s, answers))
    members = {m.name: m.deployment.url for m in fleet.resolve("m").members}
    assert members == {
        "m@10.0.0.5:8000": "http://10.0.0.5:8000",
        "m@fd00::7:8000": "http://[fd00::7]:8000",
        "m@static:9000": "http://static:9000",
    }


def test_a_named_entry_names_its_deployments_and_keeps_its_settings() -> None:
    s = settings({**A, "name": "llm", "weight": 3, "max_concurrent": 7})
    (target,) = targets(s)
    fleet = Fleet(expand(s, {target: (Found("pod-0.llm", "10.0.0.5", 8001),)}))
    (member,) = fleet.resolve("m").members
    assert member.name == "llm@pod-0.llm:8001"
    assert (member.weight, member.max_concurrent) == (3, 7)
    assert member.deployment.url == "http://10.0.0.5:8001"


def test_a_model_with_nothing_found_yet_answers_503_not_a_crash() -> None:
    fleet = Fleet(expand(settings(A), {}))
    pool = fleet.resolve("m")
    assert pool.members == () and pool.usable == 0
    from swarmgate.errors import NoDeployment
    from swarmgate.routing.balancers import RoutingFacts
    from swarmgate.routing.plan import Router

    with pytest.raises(NoDeployment):
        Router().plan(pool, RoutingFacts("m", False, None)).next()


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"discover": {"dns": "llm.test"}}, "port: required with dns"),
        ({"discover": {"dns": "a.test", "srv": "_x._tcp.a.test", "port": 1}}, "one of them"),
        ({"discover": {"srv": "_x._tcp.a.test", "port": 80}}, "port: not with srv"),
        ({"url": "http://a:1", "discover": {"dns": "a", "port": 1}}, "not both"),
        ({"discover": {"dns": "bad name!", "port": 1}}, "not a DNS name"),
        ({"weight": 2}, "url: required (or discover"),
    ],
)
def test_bad_discover_entries_are_refused_with_their_place(
    entry: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        settings(entry)
    text = "\n".join(caught.value.problems)
    assert "models.m.deployments[0]" in text and problem in text, text


def test_nameservers_are_addresses_with_ports() -> None:
    s = settings(A, discovery={"nameservers": ["127.0.0.1:5353", "[::1]:53", "10.0.0.1"]})
    assert s.discovery.nameservers[0] == "127.0.0.1:5353"
    with pytest.raises(ConfigError) as caught:
        settings(A, discovery={"nameservers": ["kube-dns"]})
    assert "a nameserver is an IP address" in caught.value.problems[0]


@pytest.fixture
async def store() -> AsyncIterator[DeploymentStore]:
    """Never read here: discovery's answers reach the fleet without the store."""
    db = Database.from_url("sqlite:///:memory:")
    yield DeploymentStore(db)
    await db.close()


async def _registry(
    s: Any, resolver: MemoryResolver, store: DeploymentStore
) -> tuple[Fleet, Registry, Discovery]:
    fleet = Fleet(expand(s, {}))
    registry = Registry(s, fleet, store, LocalBus(), {})
    discovery = Discovery(s, registry.discovered, resolver)
    await discovery.start()
    return fleet, registry, discovery


def names(fleet: Fleet) -> set[str]:
    return {m.name for m in fleet.resolve("m").members}


async def until(predicate: Any, timeout: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "not in time"
        await asyncio.sleep(0.01)


async def test_changes_are_followed_and_a_deployment_that_stays_keeps_its_state(
    caplog: pytest.LogCaptureFixture, store: DeploymentStore
) -> None:
    resolver = MemoryResolver()
    resolver.a["llm.test"] = ("10.0.0.1", "10.0.0.2")
    fleet, _, discovery = await _registry(settings(A), resolver, store)
    try:
        assert names(fleet) == {"m@10.0.0.1:8000", "m@10.0.0.2:8000"}
        kept = next(m for m in fleet.resolve("m").members if m.name == "m@10.0.0.2:8000")
        lease = kept.lease()  # a request in flight across the change
        resolver.a["llm.test"] = ("10.0.0.2", "10.0.0.3")
        await until(lambda: names(fleet) == {"m@10.0.0.2:8000", "m@10.0.0.3:8000"})
        same = next(m for m in fleet.resolve("m").members if m.name == "m@10.0.0.2:8000")
        assert same is kept and same.in_flight == 1
        lease.release()
        assert same.in_flight == 0
    finally:
        await discovery.stop()


async def test_a_failing_lookup_keeps_the_last_answer_and_is_logged_once(
    caplog: pytest.LogCaptureFixture, store: DeploymentStore
) -> None:
    resolver = MemoryResolver()
    resolver.a["llm.test"] = ("10.0.0.1",)
    fleet, _, discovery = await _registry(settings(A), resolver, store)
    caplog.set_level(logging.INFO, "swarmgate.discovery")
    try:
        resolver.failing = True
        start = resolver.lookups
        await until(lambda: resolver.lookups >= start + 6)  # several failed rounds
        assert names(fleet) == {"m@10.0.0.1:8000"}
        warnings = [r for r in caplog.records if "cannot be resolved" in r.getMessage()]
        assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
        assert "keeping its last answer (1 deployments)" in warnings[0].getMessage()
        resolver.failing = False
        resolver.a["llm.test"] = ("10.0.0.9",)
        await until(lambda: names(fleet) == {"m@10.0.0.9:8000"})
        assert any("resolves again" in r.getMessage() for r in caplog.records)
        # A second outage is logged again: once per outage.
        resolver.failing = True
        await until(
            lambda: sum("cannot be resolved" in r.getMessage() for r in caplog.records) == 2
        )
    finally:
        await discovery.stop()


async def test_no_more_than_max_addresses(
    caplog: pytest.LogCaptureFixture, store: DeploymentStore
) -> None:
    resolver = MemoryResolver()
    resolver.a["llm.test"] = tuple(f"10.0.0.{i}" for i in range(1, 11))
    entry = {"discover": {**A["discover"], "max_addresses": 3}}
    caplog.set_level(logging.WARNING, "swarmgate.discovery")
    fleet, _, discovery = await _registry(settings(entry), resolver, store)
    try:
        assert names(fleet) == {"m@10.0.0.1:8000", "m@10.0.0.10:8000", "m@10.0.0.2:8000"}
        start = resolver.lookups
        await until(lambda: resolver.lookups >= start + 3)
        truncated = [r for r in caplog.records if "max_addresses" in r.getMessage()]
        assert len(truncated) == 1 and "names 10 servers; using the first 3" in (
            truncated[0].getMessage()
        )
    finally:
        await discovery.stop()


async def test_srv_targets_resolve_to_their_addresses_and_ports(store: DeploymentStore) -> None:
    resolver = MemoryResolver()
    resolver.srv["_http._tcp.llm.test"] = (("pod-0.llm.test", 8001), ("pod-1.llm.test", 8002))
    resolver.a["pod-0.llm.test"] = ("10.0.0.1",)  # pod-1 does not resolve: left out
    s = settings({"discover": {"srv": "_http._tcp.llm.test", "interval": 0.05}})
    fleet, _, discovery = await _registry(s, resolver, store)
    try:
        (member,) = fleet.resolve("m").members
        assert (member.name, member.deployment.url) == (
            "m@pod-0.llm.test:8001",
            "http://10.0.0.1:8001",
        )
        resolver.a["pod-1.llm.test"] = ("10.0.0.2",)
        await until(lambda: names(fleet) == {"m@pod-0.llm.test:8001", "m@pod-1.llm.test:8002"})
    finally:
        await discovery.stop()


async def test_a_reload_keeps_the_answers_of_entries_that_stay(store: DeploymentStore) -> None:
    resolver = MemoryResolver()
    resolver.a["llm.test"] = ("10.0.0.1",)
    resolver.a["other.test"] = ("10.0.1.1",)
    first = settings(A)
    fleet, registry, discovery = await _registry(first, resolver, store)
    try:
        other = {"discover": {"dns": "other.test", "port": 9000, "interval": 60}}
        second = settings(A, other)
        resolver.failing = True  # the reload's lookups fail: the kept answer serves
        await discovery.reconfigure(second, notify=False)
        registry.rebase(second, discovery.answers)
        assert names(fleet) == {"m@10.0.0.1:8000"}
        resolver.failing = False
        await discovery.reconfigure(second, notify=False)
        registry.rebase(second, discovery.answers)
        assert names(fleet) == {"m@10.0.0.1:8000", "m@10.0.1.1:9000"}
        await discovery.reconfigure(settings({"url": "http://static:1"}), notify=True)
        assert discovery.answers == {} and not discovery._tasks
        assert Target("m", second.models["m"].deployments[1].discover) not in discovery.answers  # type: ignore[arg-type]
    finally:
        await discovery.stop()
