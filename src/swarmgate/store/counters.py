"""The in-process counter store: every limit's counters in this process's memory.

The embedded default (one process). It is also the Redis store's fallback when Redis is
away and ``limits.redis_failure`` is ``fail_open``, with every limit scaled by this replica's
share (``scale``). ``take_now`` never awaits, so the check and the charge of all of a
request's limits happen with no other request in between: all or none, without a lock.

The arithmetic is ``limits.gcra``, ``limits.windows`` and ``limits.budget`` (pure modules that
import nothing of ours); the Redis script mirrors it. A budget's counter is the spend of the
current UTC day or month, under its check's key plus the period's name (so a new period is a
new counter); it is checked at ``take`` and charged at ``settle``, with the request's cost.

The hot path: a plan's checks arrive as the same tuple on every request (``Admission`` caches
its plans), so their counters are looked up once and kept beside it (``_Bound``: the counter
objects and each check's fields, unpacked), until a sweep or ``clear`` may have dropped some
of them. A plan of rates, windows and leases at full scale is then decided by ``_take_bound``
without a key lookup or an attribute read per check; the rest (budgets, a replica's share
in fallback) by the general ``_take``, which does the same sums.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from swarmgate.limits import budget
from swarmgate.limits.gcra import gcra, remaining, reset
from swarmgate.limits.windows import Leases, SlidingLog
from swarmgate.types import Check, CheckKind, Verdict

RATE, REQUESTS, TOKENS, CONCURRENT, SPEND, CAPACITY = (
    CheckKind.RATE,
    CheckKind.REQUESTS,
    CheckKind.TOKENS,
    CheckKind.CONCURRENT,
    CheckKind.SPEND,
    CheckKind.CAPACITY,
)
SWEEP_EVERY = 4096  # admissions between sweeps of idle counters (bounded memory)
BOUND_MAX = 4096  # plans whose counters are kept bound; past it the cache starts over
FAST = frozenset({RATE, REQUESTS, TOKENS, CONCURRENT})  # kinds ``_take_bound`` decides


def _scaled(limit: float, scale: float) -> int:
    """A replica's share of a limit: at least 1, so that a share never refuses everyone."""
    return max(1, math.floor(limit * scale))


class Spent:
    """A budget's spend in one period, and when that period ends (epoch seconds)."""

    __slots__ = ("total", "until")

    def __init__(self, until: float, total: float = 0.0) -> None:
        self.total = total
        self.until = until


class _Bound(NamedTuple):
    """One plan's checks with their counters: ``ops`` holds, per check, its kind, counter,
    limit, period and burst; ``fast``: every kind is one ``_take_bound`` decides."""

    checks: Sequence[Check]  # held, so that its id is not reused while the entry lives
    ops: tuple[tuple[CheckKind, Any, float, float, int], ...]
    fast: bool


def _state(check: Check) -> Any:
    if check.kind is RATE:
        return [0.0]  # the theoretical arrival time
    if check.kind is CONCURRENT or check.kind is CAPACITY:
        return Leases()  # a pool's capacity: only the Redis store's fallback sees it
    return SlidingLog(check.period)


class MemoryCounters:
    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        scale: float = 1.0,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._wall = wall  # budgets follow the calendar
        self._states: dict[str, Any] = {}
        self.scale = scale  # limits are multiplied by it (a replica's share, in fallback)
        self._until_sweep = SWEEP_EVERY
        self._bound: dict[int, _Bound] = {}  # id(checks) -> its counters (see the docstring)

    async def take(self, checks: Sequence[Check], tokens: int, lease: str) -> Verdict:
        return self.take_now(checks, tokens, lease)

    def take_now(self, checks: Sequence[Check], tokens: int, lease: str) -> Verdict:
        now = self._clock()
        self._until_sweep -= 1
        if self._until_sweep <= 0:
            self._sweep(now)  # before the checks: never between a check and its charge
        bound = self._bound.get(id(checks))
        if bound is None or bound.checks is not checks:
            bound = self._bind(checks)
        if bound.fast and self.scale == 1.0:
            return self._take_bound(bound.ops, now, tokens, lease)
        return self._take(checks, now, tokens, lease)

    def _bind(self, checks: Sequence[Check]) -> _Bound:
        if len(self._bound) >= BOUND_MAX:
            self._bound.clear()
        states = self._states
        ops = []
        fast = True
        for check in checks:
            state = None
            if check.kind in FAST:
                state = states.get(check.key)
                if state is None:
                    state = states[check.key] = _state(check)
            else:
                fast = False
            ops.append((check.kind, state, check.limit, check.period, check.burst))
        bound = self._bound[id(checks)] = _Bound(checks, tuple(ops), fast)
        return bound

    def _take_bound(
        self,
        ops: tuple[tuple[CheckKind, Any, float, float, int], ...],
        now: float,
        tokens: int,
        lease: str,
    ) -> Verdict:
        """``_take``'s sums for a bound plan at full scale: check every limit, then (only if
        all pass) charge every one, with nothing awaited in between. The hot path of every
        limited request: ``SlidingLog.add`` and ``Leases.take`` are written out inline (a call
        each would cost more than the work), and the test suite holds the two paths equal."""
        refused, longest = -1, 0.0
        for i, (kind, state, limit, period, burst) in enumerate(ops):
            if kind is REQUESTS or kind is TOKENS:
                times = state.times
                if times and times[0] <= now - period:
                    state.trim(now)
                cost = 1 if kind is REQUESTS else tokens
                wait = 0.0 if state.total + cost <= limit else state.wait(now, cost, limit)
            elif kind is RATE:
                wait = gcra(state[0], now, period, burst)[1]
            else:
                wait = 0.0 if len(state.held) < limit else state.wait(now, limit)
            if wait > longest:
                refused, longest = i, wait
        if refused >= 0:
            return Verdict(refused, longest)
        left: list[float] = []
        resets: list[float] = []
        handles: list[Any] = []
        for kind, state, limit, period, burst in ops:
            if kind is REQUESTS or kind is TOKENS:
                cost = 1 if kind is REQUESTS else tokens
                times = state.times
                # SlidingLog.add: the entry's handle is the count of entries before it.
                handles.append((state, state.dropped + len(times)) if kind is TOKENS else None)
                times.append(now)
                state.amounts.append(cost)
                state.total = total = state.total + cost
                left.append(limit - total if limit > total else 0)
                resets.append(times[0] + period - now)
            elif kind is RATE:
                handles.append(None)
                state[0] = tat = gcra(state[0], now, period, burst)[0]
                left.append(remaining(tat, now, period, burst))
                resets.append(tat - now if tat > now else 0.0)
            else:
                handles.append(state)
                held = state.held
                held[lease] = now + period  # Leases.take
                left.append(limit - len(held) if limit > len(held) else 0)
                resets.append(0.0)
        return Verdict(-1, 0.0, tuple(left), tuple(resets), tuple(handles))

    def _take(self, checks: Sequence[Check], now: float, tokens: int, lease: str) -> Verdict:
        states, scale = self._states, self.scale
        refused, longest = -1, 0.0
        found = []
        # First every check, then (only if all pass) every charge: nothing awaits in between.
        for i, check in enumerate(checks):
            kind = check.kind
            if kind is SPEND:
                spent, left_in_period = self._spent(check)
                found.append(spent)
                wait = 0.0 if spent.total < check.limit * scale else left_in_period
                if wait > longest:
                    refused, longest = i, wait
                continue
            state = states.get(check.key)
            if state is None:
                state = states[check.key] = _state(check)
            found.append(state)
            limit = check.limit if scale == 1.0 else _scaled(check.limit, scale)
            if kind is REQUESTS or kind is TOKENS:
                state.trim(now)
                cost = 1 if kind is REQUESTS else tokens
                wait = 0.0 if state.total + cost <= limit else state.wait(now, cost, limit)
            elif kind is RATE:
                burst = check.burst if scale == 1.0 else _scaled(check.burst, scale)
                wait = gcra(state[0], now, check.period / scale, burst)[1]
            else:
                wait = state.wait(now, limit)
            if wait > longest:
                refused, longest = i, wait
        if refused >= 0:
            return Verdict(refused, longest)
        return self._charge(checks, found, now, tokens, lease)

    def _charge(
        self, checks: Sequence[Check], found: list[Any], now: float, tokens: int, lease: str
    ) -> Verdict:
        """Charge every check (all passed), with each one's remaining and reset."""
        scale = self.scale
        left: list[float] = []
        resets: list[float] = []
        handles: list[Any] = []
        for check, state in zip(checks, found, strict=True):
            kind = check.kind
            limit = check.limit if scale == 1.0 else _scaled(check.limit, scale)
            if kind is REQUESTS or kind is TOKENS:
                handle = state.add(now, 1 if kind is REQUESTS else tokens)
                handles.append((state, handle) if kind is TOKENS else None)
                left.append(limit - state.total if limit > state.total else 0)
                resets.append(state.times[0] + state.window - now)
                continue
            handles.append(state if kind is CONCURRENT or kind is CAPACITY else None)
            if kind is SPEND:
                left.append(max(0.0, check.limit * scale - state.total))
                resets.append(state.until - self._wall())
            elif kind is RATE:
                interval = check.period / scale
                burst = check.burst if scale == 1.0 else _scaled(check.burst, scale)
                state[0] = tat = gcra(state[0], now, interval, burst)[0]
                left.append(remaining(tat, now, interval, burst))
                resets.append(reset(tat, now))
            else:
                state.take(lease, now + check.period)
                left.append(max(0, limit - len(state.held)))
                resets.append(0.0)
        return Verdict(-1, 0.0, tuple(left), tuple(resets), tuple(handles))

    def _spent(self, check: Check) -> tuple[Spent, float]:
        """The counter of a budget's current period, and the seconds left in it."""
        now = self._wall()
        name, left = budget.current(check.period, now)
        key = check.key + ":" + name
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = Spent(now + left)
        return state, left

    def settle(
        self,
        checks: Sequence[Check],
        verdict: Verdict,
        lease: str,
        reserved: int,
        used: int,
        cost: float = 0.0,
    ) -> None:
        handles = verdict.handles
        if handles is None:
            return
        # Each handle is the counter it was charged on (a leases' set; a window's, with its
        # entry), never looked up again: one a sweep dropped since is detached, and what is
        # given back to it is given to nobody.
        for check, handle in zip(checks, handles, strict=True):
            if handle is None:
                if cost > 0 and check.kind is SPEND:
                    # Charged to the period the request ended in.
                    self._spent(check)[0].total += cost
            elif check.kind is TOKENS:
                if used != reserved:
                    self._settle_tokens(handle[0], handle[1], reserved, used)
            else:
                handle.held.pop(lease, None)  # Leases.release

    def _settle_tokens(self, state: SlidingLog, handle: int, reserved: int, used: int) -> None:
        now = self._clock()
        if used < reserved:
            state.lower(handle, used, now)
        else:
            # Debt: counted from now, so the next admissions pay for it first.
            state.trim(now)
            state.add(now, used - reserved)

    def _sweep(self, now: float) -> None:
        self._until_sweep = SWEEP_EVERY
        self._bound.clear()  # it may hold counters about to be dropped
        idle = []
        wall = self._wall()
        for key, state in self._states.items():
            if isinstance(state, Spent):
                if state.until <= wall:
                    idle.append(key)
            elif isinstance(state, list):
                if state[0] <= now:
                    idle.append(key)
            elif isinstance(state, Leases):
                if not state.in_use(now):
                    idle.append(key)
            else:
                state.trim(now)
                if not state.times:
                    idle.append(key)
        for key in idle:
            del self._states[key]

    def clear(self) -> None:
        self._states.clear()
        self._bound.clear()

    async def restore_spend(self, spent: Mapping[str, tuple[float, float]]) -> int:
        """Budgets after a restart: ``spent`` maps a budget's counter key (its check's key,
        ``:``, the period's name) to what the ledger holds for the period and the seconds left
        in it. Counters that exist already are kept (they know more than the ledger's last
        flush). How many were restored."""
        wall = self._wall()
        restored = 0
        for key, (total, left) in spent.items():
            if key not in self._states:
                self._states[key] = Spent(wall + left, total)
                restored += 1
        return restored

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None
