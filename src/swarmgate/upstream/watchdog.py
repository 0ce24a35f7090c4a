"""Bounds on every upstream wait: time to first byte, idle between chunks, and total.

Why hand-written: ``asyncio.timeout`` arms and disarms a timer handle on every use, and a stream
would need a fresh one per chunk. The watchdog arms ONE timer per request and re-arms it only
when it fires; the per-chunk cost is a float store (``touch``). When a bound is exceeded it
cancels the request's task, and the handler turns that cancellation into ``UpstreamTimeout``.

A hung deployment (it accepts connections and never answers) is found out by its probes; a
request already waiting on it for its first byte is then cut at the watchdog's next wake (at
most ``idle`` seconds later, as for any first byte) and, having reached nothing of the client,
tried on another deployment. ``down`` is any object with a ``probe_up`` attribute: the watchdog
sits below routing and only reads it.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from swarmgate.config import Timeouts


class Witness(Protocol):
    @property
    def probe_up(self) -> bool: ...


class Watchdog:
    __slots__ = (
        "_handle",
        "_loop",
        "_started",
        "_task",
        "_timeouts",
        "_witness",
        "expired",
        "first_byte_seen",
        "last",
    )

    def __init__(self, timeouts: Timeouts, witness: Witness | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None, "a watchdog guards the current task"
        self._task = task
        self._timeouts = timeouts
        self._witness = witness
        self._started = self.last = self._loop.time()
        self.expired: str | None = None
        self.first_byte_seen = False
        # Armed once, at the earliest bound that can apply; it re-arms itself when it fires
        # early, so most requests finish without the timer ever firing.
        first = min(timeouts.first_byte, timeouts.idle, timeouts.total)
        self._handle = self._loop.call_at(self._started + first, self._check)

    def touch(self) -> None:
        """Called for every chunk: the hot path, so only a clock read and a store."""
        self.last = self._loop.time()

    def first_byte(self) -> None:
        """Once per request: from now on the idle bound applies (the armed timer is never
        later than ``started + idle``, so it cannot miss it)."""
        self.first_byte_seen = True
        self.last = self._loop.time()

    def _check(self) -> None:
        now = self._loop.time()
        t = self._timeouts
        total_at = self._started + t.total
        if self.first_byte_seen:
            due = min(self.last + t.idle, total_at)
            reason = "idle" if due < total_at else "total"
        else:
            due = min(self._started + t.first_byte, total_at)
            reason = "first_byte" if due < total_at else "total"
        witness = self._witness
        if not self.first_byte_seen and witness is not None and not witness.probe_up:
            due, reason = now, "deployment_down"
        if now + 1e-3 < due:
            # Before the first byte, wake at least every ``idle`` seconds: a first byte that
            # arrives meanwhile starts the idle bound, which must not wait for this deadline.
            wake = due if self.first_byte_seen else min(due, now + t.idle)
            self._handle = self._loop.call_at(wake, self._check)
            return
        self.expired = reason
        self._task.cancel()

    def disarm(self) -> None:
        self._handle.cancel()

    def absorb(self) -> bool:
        """After a CancelledError: True if the watchdog caused it (and it is then absorbed)."""
        if self.expired is None:
            return False
        self._task.uncancel()
        return True

    def describe(self) -> str:
        t = self._timeouts
        if self.expired == "deployment_down":
            return "upstream timed out: the deployment went down (failing its health probes)"
        limits = {"first_byte": t.first_byte, "idle": t.idle, "total": t.total}
        what = {
            "first_byte": "no response within the first-byte timeout",
            "idle": "no data within the idle timeout",
            "total": "the request exceeded the total timeout",
        }[self.expired or "total"]
        return f"upstream timed out: {what} ({limits[self.expired or 'total']:g}s)"
