"""The fleet-wide line for a model's capacity, on real Redis: two "replicas" (each its own
counter store, line and event bus) share one pool of slots; a slot freed on one wakes a waiter
on the other through pub/sub (not the poll), the line is by priority then arrival, it is
bounded, a wait ends, and a waiter that vanished does not block the line."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import redis

from swarmgate.errors import ClientGone, NoDeployment
from swarmgate.limits import capacity
from swarmgate.limits.capacity import CapacityLine, Place
from swarmgate.observability.metrics import Metrics
from swarmgate.store import names
from swarmgate.store.events import RedisBus
from swarmgate.store.redis_counters import RedisCounters
from swarmgate.types import Check, CheckKind

pytestmark = pytest.mark.redis

POOL = Check(CheckKind.CAPACITY, names.LIMITS + "pool:m", 1, 60.0, 1, "capacity", "pool")
RPM = Check(CheckKind.REQUESTS, "k:rpm", 100, 60.0, 1, "rpm", "key")


@dataclass
class Replica:
    counters: RedisCounters
    line: CapacityLine
    bus: RedisBus


def place(priority: int = 0, max_wait: float = 10.0, max_length: int = 10) -> Place:
    return Place("m", "t", priority, max_wait, max_length)


@pytest.fixture
async def two(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[list[Replica]]:
    # A poll this slow would fail every test below that waits: only pub/sub wakes in time.
    monkeypatch.setattr(capacity, "POLL_SECONDS", 60.0)
    replicas = []
    for _ in range(2):
        counters = RedisCounters(redis_url, Metrics())
        line = CapacityLine(counters, Metrics())
        bus = RedisBus(redis_url)
        bus.subscribe(names.CAPACITY_FREED, line.freed)
        await counters.start()
        await bus.start()
        replicas.append(Replica(counters, line, bus))
    yield replicas
    for r in replicas:
        await r.bus.close()
        await r.counters.close()


async def until_waiting(redis_url: str, n: int) -> None:
    plain = redis.Redis.from_url(redis_url)
    try:
        for _ in range(200):
            if plain.zcard(POOL.key + ":line") == n:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{n} waiters never joined the line")
    finally:
        plain.close()


async def test_a_slot_freed_on_one_replica_serves_a_waiter_on_the_other(
    two: list[Replica], redis_url: str
) -> None:
    a, b = two
    held = await a.counters.take((RPM, POOL), 0, "a1")
    assert held.refused == -1
    refused = await b.counters.take((RPM, POOL), 0, "b1")
    assert refused.refused == 1  # the pool, not the rpm
    waiting = asyncio.create_task(b.line.wait((RPM, POOL), 1, 0, "b1", place()))
    await until_waiting(redis_url, 1)
    a.counters.settle((RPM, POOL), held, "a1", 0, 0)
    await a.counters.take((), 0, "flush")  # carries the settlement (and its publish)
    verdict = await asyncio.wait_for(waiting, 5)
    assert verdict.refused == -1
    await until_waiting(redis_url, 0)  # admitted: out of the line


async def test_the_line_is_by_priority_then_arrival_across_replicas(
    two: list[Replica], redis_url: str
) -> None:
    a, b = two
    held = await a.counters.take((POOL,), 0, "holder")
    low = asyncio.create_task(a.line.wait((POOL,), 0, 0, "low", place(priority=0)))
    await until_waiting(redis_url, 1)
    high = asyncio.create_task(b.line.wait((POOL,), 0, 0, "high", place(priority=20)))
    await until_waiting(redis_url, 2)
    # A newcomer does not jump the line either.
    assert (await b.counters.take((POOL,), 0, "newcomer")).refused == 0
    a.counters.settle((POOL,), held, "holder", 0, 0)
    await a.counters.take((), 0, "flush")
    first = await asyncio.wait_for(high, 5)
    assert first.refused == -1 and not low.done()
    b.counters.settle((POOL,), first, "high", 0, 0)
    await b.counters.take((), 0, "flush")
    assert (await asyncio.wait_for(low, 5)).refused == -1


async def test_the_line_is_bounded_and_a_wait_ends(two: list[Replica], redis_url: str) -> None:
    a, b = two
    await a.counters.take((POOL,), 0, "holder")
    first = asyncio.create_task(a.line.wait((POOL,), 0, 0, "w1", place(max_length=1)))
    await until_waiting(redis_url, 1)
    with pytest.raises(NoDeployment, match="1 requests wait"):
        await b.line.wait((POOL,), 0, 0, "w2", place(max_length=1))
    with pytest.raises(NoDeployment, match="no request may wait"):
        await b.line.wait((POOL,), 0, 0, "w3", place(max_wait=0))
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await a.counters.take((), 0, "flush")  # carries its leaving
    await until_waiting(redis_url, 0)
    with pytest.raises(NoDeployment, match=r"within 0\.3 s"):
        await b.line.wait((POOL,), 0, 0, "w4", place(max_wait=0.3))
    await b.counters.take((), 0, "flush")
    await until_waiting(redis_url, 0)  # it left the line when its wait ended


async def test_a_waiter_that_vanished_drops_out_of_the_line(
    two: list[Replica], redis_url: str
) -> None:
    a, _ = two
    # A replica that joined and died: its place lasts only its wait.
    assert await a.counters.join(POOL.key, "ghost", 0, 0.2, 10)
    assert (await a.counters.take((POOL,), 0, "newcomer")).refused == 0
    await asyncio.sleep(0.3)
    assert (await a.counters.take((POOL,), 0, "newcomer")).refused == -1


async def test_a_waiter_whose_client_leaves_leaves_the_line(
    two: list[Replica], redis_url: str
) -> None:
    a, _ = two
    await a.counters.take((POOL,), 0, "holder")
    left = asyncio.Event()

    async def receive() -> dict[str, str]:
        await left.wait()
        return {"type": "http.disconnect"}

    waiting = asyncio.create_task(a.line.wait((POOL,), 0, 0, "w", place(), receive))
    await until_waiting(redis_url, 1)
    left.set()
    with pytest.raises(ClientGone):
        await asyncio.wait_for(waiting, 5)
    await a.counters.take((), 0, "flush")  # carries its leaving
    await until_waiting(redis_url, 0)


async def test_the_slots_of_a_replica_that_died_are_freed_at_once(
    two: list[Replica], redis_url: str
) -> None:
    a, b = two
    live = await a.counters.take((POOL,), 0, a.counters.replica_id + ":1")
    assert live.refused == -1
    assert (await b.counters.take((POOL,), 0, b.counters.replica_id + ":1")).refused == 0
    a.counters.settle((POOL,), live, a.counters.replica_id + ":1", 0, 0)
    # A replica takes the slot and vanishes (its mark gone, as its heartbeats stop) without
    # giving it back: the slot is not held for the lease's 60 s.
    ghost = RedisCounters(redis_url, Metrics())
    await ghost.start()
    assert (await ghost.take((POOL,), 0, ghost.replica_id + ":1")).refused == -1
    await ghost.close()
    assert (await b.counters.take((POOL,), 0, b.counters.replica_id + ":2")).refused == -1
