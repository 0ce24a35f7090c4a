"""``PlacementHints``: gateway replicas share their prefix indexes through Redis pub/sub.

Each replica's prefix-aware balancers learn where prompts were served from their own
traffic; with several replicas behind a load balancer, each would see only its share and send
a prompt another replica placed to a cold server (SGLang's router lost 10-20% of its hits
that way). So every placement recorded here is also published, and every replica records the
others' placements in its own index.

Hints, not locks. The request path never waits for Redis: ``put`` appends to a bounded
buffer, and a background task publishes it in batches every ``interval``. A replica routes on
its local index as it is at the moment of choosing; a hint still on its way, or lost (Redis
away, a replica restarting, the buffer full), costs at most a cache miss, never an error.
While Redis does not take a batch within the bus's ``publish_timeout``, batches are dropped,
not queued, until it answers a ping again: a backlog of old placements is not worth sending.

A message is ``{"r": replica, "p": [[model, deployment, [block, ...]], ...]}``; a replica
skips its own, and placements of models or deployments it does not have (the other replica
may run a newer config).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from typing import Any

import orjson

from swarmgate.routing.fleet import Fleet
from swarmgate.routing.prefix import MAX_BLOCKS, PrefixAware
from swarmgate.store import names
from swarmgate.store.events import EventBus

log = logging.getLogger("swarmgate.hints")

INTERVAL = 0.05  # seconds between batches: how stale another replica's view is, at most
MAX_PENDING = 1024  # placements buffered between batches; past it the oldest are dropped
AWAY_BACKOFF = 1.0  # seconds between pings while Redis does not take batches

Placement = tuple[str, str, tuple[int, ...]]  # model, deployment, blocks


class PlacementHints:
    def __init__(
        self,
        fleet: Fleet,
        bus: EventBus,
        *,
        interval: float = INTERVAL,
        publish_timeout: float = 0.25,
        replica: str | None = None,
    ) -> None:
        self.fleet = fleet
        self.bus = bus
        self.interval = interval
        self.publish_timeout = publish_timeout
        self.replica = replica or os.urandom(6).hex()
        self._pending: deque[Placement] = deque(maxlen=MAX_PENDING)
        self._task: asyncio.Task[None] | None = None
        self.received = 0  # placements of other replicas recorded (for tests and debugging)
        bus.subscribe(names.PLACEMENTS, self._heard)  # before the bus starts listening

    def attach(self) -> int:
        """Have the current fleet's prefix-aware balancers publish their placements; called
        at startup and whenever the fleet is replaced. The number of balancers attached."""
        attached = 0
        for pool in self.fleet.snapshot.pools.values():
            balancer = pool.balancer
            if isinstance(balancer, PrefixAware):
                balancer.on_served = self.put
                attached += 1
        return attached

    def put(self, model: str, name: str, blocks: tuple[int, ...]) -> None:
        """A placement to publish (called from the accounting: it never awaits)."""
        self._pending.append((model, name, blocks))

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="placement-hints")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if not self._pending:
                continue
            message = self._message()
            started = time.monotonic()
            await self.bus.publish(names.PLACEMENTS, message)
            if time.monotonic() - started >= self.publish_timeout:
                await self._wait_for_redis()

    def _message(self) -> str:
        pending = self._pending
        seen: set[tuple[str, str, int]] = set()
        placements = []
        while pending:
            model, name, blocks = pending.popleft()
            key = (model, name, blocks[-1])  # chained: the last block names the whole prefix
            if key not in seen:
                seen.add(key)
                placements.append([model, name, blocks])
        return orjson.dumps({"r": self.replica, "p": placements}).decode()

    async def _wait_for_redis(self) -> None:
        log.warning("redis does not take placement hints; replicas route on their own views")
        while not await self.bus.ping():
            self._pending.clear()
            await asyncio.sleep(AWAY_BACKOFF)
        self._pending.clear()
        log.warning("redis is back: placement hints shared again")

    def _heard(self, message: str) -> None:
        try:
            data = orjson.loads(message)
        except orjson.JSONDecodeError:
            return
        if not isinstance(data, dict) or data.get("r") == self.replica:
            return  # our own, heard back (the bus calls local listeners too)
        placements = data.get("p")
        if isinstance(placements, list):
            for placement in placements:
                self._record(placement)

    def _record(self, placement: Any) -> None:
        if not (isinstance(placement, list) and len(placement) == 3):
            return
        model, name, blocks = placement
        pools = self.fleet.snapshot.pools
        pool = pools.get(model) if isinstance(model, str) else None
        if pool is None or not isinstance(pool.balancer, PrefixAware):
            return
        if not any(m.name == name for m in pool.members):
            return
        if not (isinstance(blocks, list) and 0 < len(blocks) <= MAX_BLOCKS):
            return
        if not all(type(b) is int for b in blocks):
            return
        pool.balancer.index.record(blocks, name)
        self.received += 1
