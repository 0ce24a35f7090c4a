"""The fleet-wide line for a saturated model (with Redis): its capacity held across replicas.

With Redis, every admission also takes a slot of its pool's capacity (its deployments'
``max_concurrent`` summed: a ``CheckKind.CAPACITY`` check), in the same script as its limits:
however many replicas send requests to a model's servers, no more are in flight at once than
those servers take. A request that finds the pool full waits in the pool's line in Redis
(``store/line.lua``): by tier priority, then by arrival, across all replicas. A released slot
publishes the pool's key (``store/settle.lua``); every replica wakes its waiters for that pool,
they try again, and the script gives the free slots to the first of the line. So capacity
freed on one replica releases a waiter on any. A lost message costs a poll interval, never a
waiter: every waiter also tries again every ``POLL_SECONDS``; and a waiter that is gone (its
replica died) drops out of the line when its wait is over.

A client that leaves while it waits leaves the line at once (its request ends as gone). The
bounds are the local queue's: the tier's ``limits.queue.<tier>`` (``max_wait``,
``max_length``) or the model's ``queue_timeout`` and ``queue_size``; past them a 503 with
``Retry-After``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import NamedTuple

from swarmgate.errors import ClientGone, NoDeployment
from swarmgate.observability.metrics import Metrics
from swarmgate.store.redis_counters import RedisCounters
from swarmgate.types import Check, CheckKind, Receive, Verdict

POLL_SECONDS = 0.5  # a waiter tries again at least this often, woken or not


class Place(NamedTuple):
    """How one request waits: its model and tier (metrics), its priority, and its bounds."""

    model: str
    tier: str
    priority: int
    max_wait: float
    max_length: int


class CapacityLine:
    def __init__(self, counters: RedisCounters, metrics: Metrics) -> None:
        self._counters = counters
        self._metrics = metrics
        self._waiting: dict[str, set[asyncio.Event]] = {}  # pool capacity key → its waiters
        self._lengths: dict[tuple[str, str], int] = {}  # (model, tier) → waiting here

    def freed(self, key: str) -> None:
        """The event bus's listener: a slot of ``key`` was freed somewhere in the fleet."""
        for event in self._waiting.get(key, ()):
            event.set()

    async def wait(
        self,
        checks: Sequence[Check],
        at: int,
        tokens: int,
        lease: str,
        place: Place,
        receive: Receive | None = None,
    ) -> Verdict:
        """Wait in line for the capacity check ``checks[at]``: the verdict of the take that
        admitted the request, or of one that another of its limits refused meanwhile.
        ``NoDeployment`` (503) when the line is full or the wait is over; ``ClientGone``
        when the client left (``receive``: its request's)."""
        check = checks[at]
        if place.max_wait <= 0:
            raise self._refused(place, "full", "no request may wait for it")
        key = check.key
        counters = self._counters
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + place.max_wait
        event = asyncio.Event()
        waiters = self._waiting.setdefault(key, set())
        waiters.add(event)
        self._count(place, 1)
        admitted = False
        gone = asyncio.ensure_future(_disconnected(receive)) if receive is not None else None
        try:
            if not await counters.join(
                key, lease, place.priority, place.max_wait, place.max_length
            ):
                raise self._refused(place, "full", f"{place.max_length} requests wait for it")
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    raise self._refused(
                        place, "timeout", f"no slot freed within {place.max_wait:g} s"
                    )
                woken = asyncio.ensure_future(event.wait())
                watched = (woken,) if gone is None else (woken, gone)
                await asyncio.wait(
                    watched, timeout=min(left, POLL_SECONDS), return_when=asyncio.FIRST_COMPLETED
                )
                woken.cancel()
                if gone is not None and gone.done():
                    raise ClientGone
                event.clear()
                verdict = await counters.take(checks, tokens, lease)
                if verdict.refused < 0:
                    admitted = True
                    return verdict
                if checks[verdict.refused].kind is not CheckKind.CAPACITY:
                    return verdict
        finally:
            if gone is not None:
                gone.cancel()
            waiters.discard(event)
            if not waiters:
                del self._waiting[key]
            if not admitted:
                counters.leave(key, lease, check.period)
            self._count(place, -1)
            self._metrics.queue_wait(place.tier, loop.time() - started)

    def _count(self, place: Place, change: int) -> None:
        where = (place.model, place.tier)
        length = self._lengths[where] = self._lengths.get(where, 0) + change
        self._metrics.queue_length(place.model, place.tier, length)

    def _refused(self, place: Place, reason: str, why: str) -> NoDeployment:
        self._metrics.queue_rejected(place.model, place.tier, reason)
        return NoDeployment(
            f"model {place.model!r} is at capacity across the fleet and {why}; retry later",
            headers={"Retry-After": str(max(1, math.ceil(place.max_wait)))},
        )


async def _disconnected(receive: Receive) -> None:
    """Until the client disconnects (its body was read whole before admission)."""
    while (await receive())["type"] != "http.disconnect":
        pass
