"""``Scraper``: a background task that reads each deployment's ``/metrics`` on an interval.

Every ``interval`` seconds it reads the exposition of every deployment that has a
``metrics_url``, all at once, each bounded by ``timeout``, and replaces the deployment's
``load`` (``routing/load.py``) with what it read: one attribute assignment per deployment
per scrape, and nothing at all on the request path, which only reads ``DeploymentState.load``.
A deployment that does not answer keeps its last figures until they are ``stale_after``
seconds old, then has none: a dead server's last "idle" reading cannot draw traffic forever.
The fleet is read afresh each round, so that deployments added or removed by a reload are
followed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from swarmgate.config import Scrape
from swarmgate.errors import UpstreamError
from swarmgate.routing.fleet import DeploymentState, Fleet
from swarmgate.routing.load import parse
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
            await asyncio.sleep(max(interval - (self.clock() - started), interval / 10))

    async def scrape(self) -> int:
        """One round over the fleet; the number of deployments whose figures were read."""
        states = [s for s in self.fleet.snapshot.states() if s.deployment.metrics_url]
        if not states:
            return 0
        read = await asyncio.gather(*(self._one(s) for s in states))
        return sum(read)

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
