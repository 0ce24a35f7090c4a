"""The fleet's background watch: active health probes of every deployment, and the outlier
sweep of every pool. One task, started in ``Gateway.startup`` and stopped in ``shutdown``.

Nothing here runs on the request path: a probe's verdict lands in the deployment's
``DeploymentHealth`` (``probed``), which the next pick reads as one attribute. A probe is a GET
of the deployment's ``health_check.path`` (with its API key, so that ``/v1/models`` works on a
hosted endpoint too), bounded by ``timeout``. Any answer below 500 is a success (the server
answers: a 404 from one without that path must not take a model down), or only a 2xx with
``expect_2xx``; a 5xx (a 503 while a model loads), no connection or no answer in time is a
failure. Each deployment is probed every
``interval`` seconds, every ``unhealthy_interval`` while it is down or its last probe failed
(the interval is measured from a probe's start), the first time at a random
point of its first interval, so that a hundred deployments are not probed in one burst. The
loop wakes at least every second, which is also how it notices deployments added by a reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterator

from swarmgate.errors import UpstreamError
from swarmgate.observability.metrics import DeploymentHealthRow
from swarmgate.routing import outliers
from swarmgate.routing.fleet import DeploymentState, Fleet
from swarmgate.types import Clock, Transport

log = logging.getLogger("swarmgate.health")
MAX_SLEEP = 1.0


def health_rows(fleet: Fleet) -> Callable[[], Iterator[DeploymentHealthRow]]:
    """What the metrics read of each deployment's health (and scraped load) at a flush."""

    def rows() -> Iterator[DeploymentHealthRow]:
        for state in fleet.snapshot.states():
            h = state.health
            load = state.load
            yield DeploymentHealthRow(
                state.deployment.model,
                state.name,
                int(h.circuit(h.clock())),
                h.usable,
                h.breaker.opens,
                h.times_ejected,
                h.probes_ok,
                h.probes_failed,
                None if load is None else load.waiting,
                None if load is None else load.running,
                None if load is None else load.kv_usage,
            )

    return rows


class FleetWatch:
    def __init__(
        self,
        fleet: Fleet,
        transport: Transport,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.fleet = fleet
        self.transport = transport
        self.clock = clock
        self._rng = rng or random.Random()
        self._due: dict[DeploymentState, float] = {}  # when each is probed next
        self._swept: dict[str, float] = {}  # when each pool is swept next
        self._probing: set[asyncio.Task[None]] = set()
        self._running: set[DeploymentState] = set()  # probed right now: never two at once
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="fleet-watch")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._probing) if t is not None]
        self._task = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._probing.clear()

    async def _run(self) -> None:
        while True:
            try:
                wake = self.tick()
            except Exception:  # a bug here must not end the watch
                log.exception("fleet watch failed")
                wake = self.clock() + MAX_SLEEP
            await asyncio.sleep(max(0.0, min(wake - self.clock(), MAX_SLEEP)))

    def tick(self) -> float:
        """Start the probes that are due, sweep the pools that are due; when to wake next."""
        now = self.clock()
        wake = now + MAX_SLEEP
        snapshot = self.fleet.snapshot
        due = self._due
        present: set[DeploymentState] = set()
        for state in snapshot.states():
            config = state.deployment.health_check
            if not config.enabled:
                continue
            present.add(state)
            at = due.get(state)
            if at is None:
                at = due[state] = now + self._rng.uniform(0.0, config.interval)
            if at <= now and state not in self._running:
                # In doubt (down, or its last probe failed): probed sooner, so that going down
                # takes one interval and the threshold's probes, and coming back less than one.
                h = state.health
                doubt = not h.probe_up or h.probe_failures
                interval = config.unhealthy_interval if doubt else config.interval
                at = due[state] = now + interval
                task = asyncio.get_running_loop().create_task(self.probe(state))
                self._probing.add(task)
                task.add_done_callback(self._probing.discard)
            wake = min(wake, at)
        for state in [s for s in due if s not in present]:
            del due[state]
        for model, pool in snapshot.pools.items():
            detection = pool.config.outlier_detection
            at = self._swept.get(model)
            if at is None:
                at = self._swept[model] = now + detection.interval
            if at <= now:
                outliers.sweep([m.health for m in pool.members], detection, now)
                at = self._swept[model] = now + detection.interval
            wake = min(wake, at)
        return wake

    async def probe(self, state: DeploymentState) -> None:
        """One probe of ``state``'s deployment; its verdict goes to its health."""
        d = state.deployment
        config = d.health_check
        headers = {"authorization": "Bearer " + d.api_key} if d.api_key else {}
        self._running.add(state)
        try:
            async with asyncio.timeout(config.timeout):
                status = await self.transport.probe(d.origin, config.path, headers)
            ok = 200 <= status < 300 if config.expect_2xx else status < 500
        except (TimeoutError, UpstreamError):
            ok = False
        except Exception:  # a bug (of a transport, say) is no verdict on the deployment
            log.exception("health probe of %s failed", d.name)
            return
        finally:
            self._running.discard(state)
        was_up = state.health.probe_up
        state.health.probed(ok)
        if state.health.probe_up != was_up:
            log.warning(
                "deployment %s is %s (health probes of %s)",
                d.name,
                "up again" if state.health.probe_up else "down",
                config.path,
            )
