"""``Scraper``: a background task that reads each deployment's ``/metrics`` on an interval.

Every ``interval`` seconds it reads the exposition of every deployment that has a
``metrics_url``, all at once, each bounded by ``timeout``, and replaces the deployment's
``load`` (``routing/load.py``) with what it read: one attribute assignment per deployment
per scrape, and nothing at all on the request path, which only reads ``DeploymentState.load``.
A deployment that does not answer keeps its last figures until they are ``stale_after``
seconds old, then has none: a dead server's last "idle" reading cannot draw traffic forever.
The fleet is read afresh each round, so that deployments added or removed by a reload are
followed.

After each round it decides, for each deployment with a ``max_waiting``, whether its queue
counts it full (``load.queue_full``; ``DeploymentState.queue_full``, which the plan reads as
one attribute). A deployment found below its ``max_waiting`` again releases its pool's
waiters at once (``Pool.release_waiters``, highest tier first): no lease ended, so nothing
else would. Figures that hold a deployment full are decided again the moment they turn
stale, between rounds if need be, so that a reading older than ``stale_after`` never counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from swarmgate.config import Scrape
from swarmgate.errors import UpstreamError
from swarmgate.routing.fleet import DeploymentState, Fleet
from swarmgate.routing.load import parse, queue_full
from swarmgate.types import Clock
from swarmgate.upstream.exposition import Expositions

log = logging.getLogger("swarmgate.scrape")


class Scraper:
    def __init__(
        self,
        fleet: Fleet,
        expositions: Expositions,
        config: Scrape,
        clock: Clock = time.monotonic,
    ) -> None:
        self.fleet = fleet
        self.expositions = expositions
        self.config = config
        self.clock = clock
        self._task: asyncio.Task[None] | None = None
        self._failing: set[str] = set()  # names whose failure was logged (once per outage)
        # When the oldest figures holding a deployment full turn stale (None: none do).
        self.expiry: float | None = None

    def start(self) -> None:
        if self.config.interval is not None and self._task is None:
            self._task = asyncio.create_task(self._run(self.config.interval), name="scrape")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.expositions.close()

    async def _run(self, interval: float) -> None:
        while True:
            started = self.clock()
            await self.scrape()
            # A round that took long does not shorten the next one's wait below a tenth.
            due = self.clock() + max(interval - (self.clock() - started), interval / 10)
            while self.expiry is not None and self.expiry < due:
                # At least a millisecond: a clock that has not quite reached the expiry
                # must not spin the loop.
                await asyncio.sleep(max(self.expiry - self.clock(), 0.001))
                self.assess()
            await asyncio.sleep(max(due - self.clock(), 0.0))

    async def scrape(self) -> int:
        """One round over the fleet; the number of deployments whose figures were read."""
        states = [s for s in self.fleet.snapshot.states() if s.deployment.metrics_url]
        if not states:
            return 0
        read = await asyncio.gather(*(self._one(s) for s in states))
        self.assess()
        return sum(read)

    def assess(self) -> int:
        """Decide again which deployments their queue holds full, and hand the slots free now
        (of those no longer full, say) to their pools' waiters; the number handed over."""
        now = self.clock()
        stale_after = self.config.stale_after
        expiry: float | None = None
        handed = 0
        for pool in self.fleet.snapshot.pools.values():
            for state in pool.members:
                max_waiting = state.deployment.max_waiting
                if max_waiting is None:
                    continue
                full = queue_full(state.load, max_waiting, now, stale_after)
                if full:
                    assert state.load is not None
                    ends = state.load.at + stale_after
                    expiry = ends if expiry is None else min(expiry, ends)
                state.queue_full = full
            # Whatever freed the slots (this deployment's queue drained, or anything else
            # that did not end a lease), a waiter must not wait while one is free.
            if pool.queue.waiting:
                handed += pool.release_waiters()
        self.expiry = expiry
        return handed

    async def _one(self, state: DeploymentState) -> bool:
        url = state.deployment.metrics_url
        assert url is not None
        try:
            text = await self.expositions.get(url, self.config.timeout)
        except UpstreamError as exc:
            self._failed(state, str(exc))
            return False
        load = parse(text, self.clock())
        if load is None:
            self._failed(state, f"{url} has no queue, running or KV-cache figures")
            return False
        state.load = load
        self._failing.discard(state.name)
        return True

    def _failed(self, state: DeploymentState, why: str) -> None:
        load = state.load
        if load is not None and load.age(self.clock()) >= self.config.stale_after:
            state.load = None
        if state.name not in self._failing:
            self._failing.add(state.name)
            log.warning("metrics of %s not read: %s", state.name, why)
