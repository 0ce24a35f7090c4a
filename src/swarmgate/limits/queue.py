"""The line for a slot of a saturated pool: highest priority first, fair between keys.

One ``SlotQueue`` per pool (its deployments share it). A request that finds every deployment
at ``max_concurrent`` enters it as a ``Waiter`` and awaits its future; a released slot is handed
over (``hand_over``) to the next waiter while still counted in flight, so a request arriving
in between cannot take it first. The next waiter is found by priority level, highest first;
within a level, round robin over the keys that wait (each key's own requests in arrival
order): a key that is served goes to the back of its level, so no key is served twice while
another key of the level waits.

Tiers may also be held to a share of a pool's slots (``TierPolicy.share``): such a tier starts
a request only while it holds fewer than ``share`` × capacity slots of the pool, so the rest
stays free for the other tiers even before they arrive. ``held`` counts those tiers' slots;
the leases that hold them (``routing.fleet.TierLease``) give them back.

Nothing here awaits or knows about pools: the queue decides, the caller waits. Every line has
a bound (``max_length`` per tier, checked by ``enter``); the wait's own bound is the caller's.
"""

from __future__ import annotations

import asyncio
import bisect
import math
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Generic, TypeVar

S = TypeVar("S")


@dataclass(frozen=True, slots=True)
class TierPolicy:
    """How one tier waits: its priority, the share of a pool it may hold (None: all of it),
    and its own bounds on the wait and on the line (None: the model's)."""

    name: str
    priority: int
    share: float | None = None
    max_wait: float | None = None
    max_length: int | None = None


class Waiter(Generic[S]):
    """One request in line; its future gets the slot handed over."""

    __slots__ = ("future", "key", "queued", "since", "tier")

    def __init__(self, tier: TierPolicy, key: str, future: asyncio.Future[S], since: float):
        self.tier = tier
        self.key = key
        self.future = future
        self.since = since
        self.queued = True


class _Level(Generic[S]):
    """The waiters of one priority: keys in round-robin order, each key's waiters FIFO."""

    __slots__ = ("keys", "priority")

    def __init__(self, priority: int) -> None:
        self.priority = priority
        self.keys: OrderedDict[str, deque[Waiter[S]]] = OrderedDict()


class SlotQueue(Generic[S]):
    __slots__ = ("_levels", "capacity", "held", "lengths", "waiting")

    def __init__(self, capacity: int = 0) -> None:
        self.capacity = capacity  # the pool's slots (its deployments' max_concurrent summed)
        self.waiting = 0  # read on every release: 0 unless the pool is saturated
        self.lengths: dict[str, int] = {}  # waiters per tier name
        self.held: dict[str, int] = {}  # slots in use per tier held to a share
        self._levels: list[_Level[S]] = []  # highest priority first

    def limit(self, tier: TierPolicy) -> int:
        """The slots of this pool ``tier`` may hold at once (at least one)."""
        if tier.share is None:
            return self.capacity
        return max(1, math.floor(tier.share * self.capacity + 1e-9))

    def may_hold(self, tier: TierPolicy) -> bool:
        """Whether ``tier`` may take one more slot (tiers without a share always may)."""
        return tier.share is None or self.held.get(tier.name, 0) < self.limit(tier)

    def hold(self, tier: TierPolicy) -> None:
        if tier.share is not None:
            self.held[tier.name] = self.held.get(tier.name, 0) + 1

    def unhold(self, tier: TierPolicy) -> None:
        if tier.share is not None:
            self.held[tier.name] -= 1

    def enter(
        self, tier: TierPolicy, key: str, max_length: int, future: asyncio.Future[S], now: float
    ) -> Waiter[S] | None:
        """Put a request in line; None (refused) when ``max_length`` of its tier already wait."""
        if self.lengths.get(tier.name, 0) >= max_length:
            return None
        waiter = Waiter(tier, key, future, now)
        self._level(tier.priority).keys.setdefault(key, deque()).append(waiter)
        self.lengths[tier.name] = self.lengths.get(tier.name, 0) + 1
        self.waiting += 1
        return waiter

    def leave(self, waiter: Waiter[S]) -> None:
        """Take ``waiter`` out of line if it is still in it (idempotent)."""
        if not waiter.queued:
            return
        level = self._level(waiter.tier.priority)
        line = level.keys[waiter.key]
        line.remove(waiter)
        if not line:
            del level.keys[waiter.key]
        self._dequeued(waiter)

    def next_waiter(self) -> Waiter[S] | None:
        """Take the waiter the next free slot goes to out of line (None: nobody may have it).

        Highest level first; in a level, the first key in round-robin order whose tier may
        hold one more slot; that key then goes to the back. A waiter whose future is already
        done (its request was cancelled and has not left yet) is dropped on the way."""
        for level in self._levels:
            keys = level.keys
            for key, line in list(keys.items()):
                while line and line[0].future.done():
                    self._dequeued(line.popleft())
                if not line:
                    del keys[key]
                    continue
                head = line[0]
                if not self.may_hold(head.tier):
                    continue
                line.popleft()
                if line:
                    keys.move_to_end(key)
                else:
                    del keys[key]
                self._dequeued(head)
                return head
        return None

    def hand_over(self, slot: S) -> bool:
        """Give a released ``slot`` (still counted in flight) to the next waiter; False when
        nobody may have it (then the releaser frees it)."""
        waiter = self.next_waiter()
        if waiter is None:
            return False
        self.hold(waiter.tier)
        waiter.future.set_result(slot)
        return True

    def _dequeued(self, waiter: Waiter[S]) -> None:
        waiter.queued = False
        self.lengths[waiter.tier.name] -= 1
        self.waiting -= 1

    def _level(self, priority: int) -> _Level[S]:
        levels = self._levels
        # Sorted by descending priority: bisect on the negated priorities.
        i = bisect.bisect_left([-lv.priority for lv in levels], -priority)
        if i < len(levels) and levels[i].priority == priority:
            return levels[i]
        level: _Level[S] = _Level(priority)
        levels.insert(i, level)
        return level
