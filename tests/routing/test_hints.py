"""Placement hints across replicas: what one replica served, another routes on; Redis away or
a malformed hint costs nothing but a cache miss."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson

from swarmgate.config import parse_settings
from swarmgate.routing.aware import aware_balancer
from swarmgate.routing.fleet import Fleet
from swarmgate.routing.hints import PlacementHints
from swarmgate.routing.prefix import PrefixAware
from swarmgate.store import names
from swarmgate.store.events import LocalBus, RedisBus
from swarmgate.types import Outcome

SYSTEM = "Shared system prompt of the whole help desk. " * 100
CHAT = {"model": "m", "messages": [{"role": "system", "content": SYSTEM}]}


def _replica() -> tuple[Fleet, PrefixAware]:
    urls = ["http://a:1", "http://b:2"]
    fleet = Fleet(
        parse_settings({"models": {"m": {"deployments": [{"url": u} for u in urls]}}}, {})
    )
    balancer = aware_balancer("prefix_aware")
    assert isinstance(balancer, PrefixAware)
    fleet.snapshot.pools["m"].balancer = balancer
    return fleet, balancer


def _serve(balancer: PrefixAware, name: str = "m@b:2") -> tuple[int, ...]:
    facts = balancer.facts("m", False, CHAT)
    balancer.finished(name, facts, Outcome.OK, 0.1)
    return facts.blocks


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    # A bounded wait for a hint in flight, not a timing assertion.
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_what_one_replica_served_another_routes_on() -> None:
    bus = LocalBus()  # one process standing in for Redis: every replica hears every message
    (fleet_a, a), (fleet_b, b) = _replica(), _replica()
    hints_a, hints_b = PlacementHints(fleet_a, bus, interval=0.01), PlacementHints(fleet_b, bus)
    assert hints_a.attach() == 1
    hints_a.start()
    try:
        blocks = _serve(a)
        await _until(lambda: hints_b.received > 0)
    finally:
        await hints_a.stop()
    assert b.index.matches(blocks) == {"m@b:2": len(blocks)}
    views = fleet_b.snapshot.pools["m"].members
    assert views[b.choose(views, b.facts("m", False, CHAT))].name == "m@b:2"
    assert hints_a.received == 0  # its own message, heard back, is skipped


def test_hints_of_unknown_models_deployments_or_shapes_are_ignored() -> None:
    bus = LocalBus()
    fleet, balancer = _replica()
    hints = PlacementHints(fleet, bus)
    for placements in (
        [["other", "m@b:2", [1, 2]]],
        [["m", "m@nowhere:9", [1, 2]]],
        [["m", "m@b:2", []]],
        [["m", "m@b:2", ["1"]]],
        [["m", "m@b:2", [1.5]]],
        [["m", "m@b:2"]],
        "p",
    ):
        hints._heard(orjson.dumps({"r": "other", "p": placements}).decode())
    hints._heard("not json")
    hints._heard("[1]")
    assert len(balancer.index) == 0 and hints.received == 0
    hints._heard(orjson.dumps({"r": "other", "p": [["m", "m@b:2", [1, 2]]]}).decode())
    assert balancer.index.matches([1, 2]) == {"m@b:2": 2}


class AwayBus(LocalBus):
    """Redis hung: a publish waits out its bound; pings fail until ``back``."""

    def __init__(self) -> None:
        super().__init__()
        self.back = False
        self.published: list[str] = []
        self.pings = 0

    async def publish(self, channel: str, message: str) -> None:
        self.published.append(message)
        if not self.back:
            await asyncio.sleep(0.05)

    async def ping(self) -> bool | None:
        self.pings += 1
        return self.back


async def test_with_redis_away_hints_are_dropped_not_queued_and_routing_goes_on(
    monkeypatch: Any,
) -> None:
    monkeypatch.setattr("swarmgate.routing.hints.AWAY_BACKOFF", 0.01)
    bus = AwayBus()
    fleet, balancer = _replica()
    hints = PlacementHints(fleet, bus, interval=0.01, publish_timeout=0.05)
    hints.attach()
    hints.start()
    try:
        blocks = _serve(balancer)
        await _until(lambda: bus.pings >= 3)
        for _ in range(50):
            _serve(balancer)  # served while Redis is away: local placements only
        assert balancer.index.matches(blocks) == {"m@b:2": len(blocks)}
        assert len(bus.published) == 1  # nothing more tried while away
        bus.back = True
        await _until(lambda: bus.pings >= 4)
        _serve(balancer, "m@a:1")
        await _until(lambda: len(bus.published) == 2)
    finally:
        await hints.stop()
    # What piled up while Redis was away was dropped; the next placement went out alone.
    sent = orjson.loads(bus.published[-1])["p"]
    assert [p[1] for p in sent] == ["m@a:1"]


async def test_a_batch_names_each_prefix_once() -> None:
    bus = AwayBus()
    bus.back = True
    fleet, balancer = _replica()
    hints = PlacementHints(fleet, bus, interval=3600)
    hints.attach()
    for _ in range(5):
        _serve(balancer)
    assert len(orjson.loads(hints._message())["p"]) == 1


async def test_over_a_real_redis(redis_url: str) -> None:
    bus_a, bus_b = RedisBus(redis_url), RedisBus(redis_url)
    (fleet_a, a), (fleet_b, b) = _replica(), _replica()
    hints_a = PlacementHints(fleet_a, bus_a, interval=0.01)
    hints_b = PlacementHints(fleet_b, bus_b)
    await bus_a.start()
    await bus_b.start()
    hints_a.attach()
    hints_a.start()
    try:
        blocks = _serve(a, "m@a:1")
        await _until(lambda: hints_b.received > 0)
        assert b.index.matches(blocks) == {"m@a:1": len(blocks)}
    finally:
        await hints_a.stop()
        await bus_a.close()
        await bus_b.close()
    assert names.PLACEMENTS.startswith(names.PREFIX)
