"""Exact sliding windows and concurrency leases: the state and arithmetic of the in-process
counters (the Redis script keeps the same state in sorted sets and does the same sums).

``SlidingLog`` keeps one entry per admission inside its window, so "100 per minute" means
at most 100 (requests, or tokens) in any 60 s, with no boundary effect. An entry's amount may
be lowered later (tokens reserved, then settled to less); amounts charged after the fact (a
response that used more tokens than it reserved) are new entries at that time: debt that later
admissions see for a whole window. Imports nothing of ours.
"""

from __future__ import annotations

import math
from collections import deque


class SlidingLog:
    """The entries of one window as two deques of floats (times and amounts), oldest first.

    Floats, not one ``[time, amount]`` list per entry: a busy window holds a minute's
    admissions (hundreds of thousands at benchmark rates), and lists are objects the garbage
    collector walks on every full collection; floats in a deque are not. An entry is named by
    its handle, the number of entries added before it, so that ``lower`` finds it after any
    number of trims (the entries settled are the recent ones: cheap to reach from the right).
    """

    __slots__ = ("amounts", "dropped", "times", "total", "window")

    def __init__(self, window: float) -> None:
        self.window = window
        self.times: deque[float] = deque()
        self.amounts: deque[float] = deque()
        self.dropped = 0  # entries trimmed so far: a handle minus it is an index
        self.total = 0.0

    def trim(self, now: float) -> None:
        times, horizon = self.times, now - self.window
        if not times or times[0] > horizon:
            return
        amounts = self.amounts
        while times and times[0] <= horizon:
            times.popleft()
            self.total -= amounts.popleft()
            self.dropped += 1
        if not times:
            self.total = 0.0  # no float drift once empty

    def wait(self, now: float, cost: float, limit: float) -> float:
        """0 when ``cost`` fits under ``limit`` now (after ``trim``); else the seconds until
        enough of the window has slid past (``inf`` when ``cost`` alone exceeds ``limit``)."""
        excess = self.total + cost - limit
        if excess <= 0:
            return 0.0
        if cost > limit:
            return math.inf
        freed = 0.0
        for at, amount in zip(self.times, self.amounts, strict=True):
            freed += amount
            if freed >= excess:
                return max(at + self.window - now, 1e-3)
        return self.window  # unreachable while total is the sum of the entries

    def add(self, now: float, amount: float) -> int:
        """Charge ``amount`` at ``now``; the entry's handle."""
        self.times.append(now)
        self.amounts.append(amount)
        self.total += amount
        return self.dropped + len(self.times) - 1

    def lower(self, handle: int, amount: float, now: float) -> None:
        """Set an entry's amount to ``amount`` (less than it was), if it is still in the
        window: a refund never frees what has already slid out."""
        i = handle - self.dropped
        if i < 0 or self.times[i] <= now - self.window:
            return
        old = self.amounts[i]
        if amount < old:
            self.total -= old - amount
            self.amounts[i] = amount

    def reset(self, now: float) -> float:
        """Seconds until the oldest entry leaves the window (0: empty)."""
        return max(0.0, self.times[0] + self.window - now) if self.times else 0.0


class Leases:
    """Concurrency slots: each lease expires on its own, so a holder that never releases
    (a replica that died) keeps its slot for ``lease_seconds`` at most."""

    __slots__ = ("held",)

    def __init__(self) -> None:
        self.held: dict[str, float] = {}  # lease id -> expiry

    def in_use(self, now: float) -> int:
        held = self.held
        expired = [lease for lease, until in held.items() if until <= now]
        for lease in expired:
            del held[lease]
        return len(held)

    def wait(self, now: float, limit: int) -> float:
        """0 when a slot is free; else 1 s: a slot frees whenever a request ends, which is
        not known in advance (the Redis script answers the same)."""
        # Expired leases are dropped only when they would make a difference (at the limit),
        # so that an admission under the limit does not walk the leases.
        if len(self.held) < limit or self.in_use(now) < limit:
            return 0.0
        return 1.0

    def take(self, lease: str, until: float) -> None:
        self.held[lease] = until

    def release(self, lease: str) -> None:
        self.held.pop(lease, None)
