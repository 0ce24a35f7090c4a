"""The slot queue alone: priority order, round robin between keys, bounds, shares, hand-over."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmgate.limits.queue import SlotQueue, TierPolicy, Waiter

ENTERPRISE = TierPolicy("enterprise", 30)
PRO = TierPolicy("pro", 20)
FREE = TierPolicy("free", 10)
DEFAULT = TierPolicy("default", 10)  # the same level as free
TIERS = (ENTERPRISE, PRO, FREE, DEFAULT)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def served(queue: SlotQueue[str]) -> list[str]:
    """Every key in the order the queue releases them, until it is empty."""
    order = []
    while (waiter := queue.next_waiter()) is not None:
        order.append(waiter.key)
    return order


def test_the_highest_tier_goes_first_then_round_robin_between_keys(
    loop: asyncio.AbstractEventLoop,
) -> None:
    queue: SlotQueue[str] = SlotQueue(4)
    for tier, key in [(FREE, "f1"), (FREE, "f1"), (FREE, "f2"), (PRO, "p"), (DEFAULT, "d")]:
        queue.enter(tier, key, 10, loop.create_future(), 0.0)
    queue.enter(ENTERPRISE, "e", 10, loop.create_future(), 0.0)
    assert queue.waiting == 6 and queue.lengths == {
        "free": 3,
        "pro": 1,
        "default": 1,
        "enterprise": 1,
    }
    # f1 waited first but is not served twice before f2 and d (the same level) have been.
    assert served(queue) == ["e", "p", "f1", "f2", "d", "f1"]
    assert queue.waiting == 0 and set(queue.lengths.values()) == {0}


def test_a_tier_line_is_bounded_on_its_own(loop: asyncio.AbstractEventLoop) -> None:
    queue: SlotQueue[str] = SlotQueue(1)
    assert queue.enter(FREE, "a", 2, loop.create_future(), 0.0) is not None
    assert queue.enter(FREE, "b", 2, loop.create_future(), 0.0) is not None
    assert queue.enter(FREE, "c", 2, loop.create_future(), 0.0) is None  # full
    assert queue.enter(PRO, "c", 2, loop.create_future(), 0.0) is not None  # its own line
    assert queue.enter(FREE, "c", 0, loop.create_future(), 0.0) is None
    assert queue.waiting == 3


def test_leaving_is_idempotent_and_keeps_the_others_order(loop: asyncio.AbstractEventLoop) -> None:
    queue: SlotQueue[str] = SlotQueue(1)
    waiters = [queue.enter(FREE, k, 10, loop.create_future(), 0.0) for k in "abc"]
    middle = waiters[1]
    assert middle is not None
    queue.leave(middle)
    queue.leave(middle)
    assert queue.waiting == 2 and queue.lengths["free"] == 2
    assert served(queue) == ["a", "c"]


def test_a_slot_is_handed_over_past_cancelled_waiters(loop: asyncio.AbstractEventLoop) -> None:
    queue: SlotQueue[str] = SlotQueue(1)
    first = queue.enter(ENTERPRISE, "a", 10, loop.create_future(), 0.0)
    second = queue.enter(FREE, "b", 10, loop.create_future(), 0.0)
    assert first is not None and second is not None
    first.future.cancel()  # its task was cancelled; it has not left the line yet
    assert queue.hand_over("slot-1")
    assert second.future.result() == "slot-1"
    assert queue.waiting == 0
    queue.leave(first)  # then it leaves: nothing counted twice
    assert queue.waiting == 0 and queue.lengths == {"enterprise": 0, "free": 0}
    assert not queue.hand_over("slot-2")  # nobody waits: the releaser frees it


def test_a_tier_with_a_share_waits_while_it_holds_it(loop: asyncio.AbstractEventLoop) -> None:
    capped = TierPolicy("free", 10, share=0.5)
    queue: SlotQueue[str] = SlotQueue(4)
    assert queue.limit(capped) == 2 and queue.limit(PRO) == 4
    queue.hold(capped)
    queue.hold(capped)
    queue.hold(PRO)  # tiers without a share are not counted
    assert queue.held == {"free": 2}
    assert not queue.may_hold(capped) and queue.may_hold(PRO)
    waiter = queue.enter(capped, "f", 10, loop.create_future(), 0.0)
    assert waiter is not None
    assert not queue.hand_over("slot")  # free holds its share: the slot is not its
    queue.unhold(capped)
    assert queue.hand_over("slot") and waiter.future.result() == "slot"
    assert queue.held == {"free": 2}  # held again, for the waiter it was handed to
    assert queue.limit(TierPolicy("tiny", 1, share=0.01)) == 1  # never shut out


# The property: a random sequence of arrivals, departures (cancelled requests) and releases.
Op = tuple[str, int, int]
ops = st.lists(
    st.one_of(
        st.tuples(st.just("enter"), st.integers(0, len(TIERS) - 1), st.integers(0, 1)),
        st.tuples(st.just("leave"), st.integers(0, 50), st.just(0)),
        st.tuples(st.just("serve"), st.just(0), st.just(0)),
    ),
    max_size=80,
)


@settings(max_examples=500, deadline=None, derandomize=True)
@given(ops)
def test_release_order_respects_priority_fifo_and_round_robin(operations: list[Op]) -> None:
    loop = asyncio.new_event_loop()
    try:
        _check_release_order(loop, operations)
    finally:
        loop.close()


def _check_release_order(loop: asyncio.AbstractEventLoop, operations: list[Op]) -> None:
    queue: SlotQueue[str] = SlotQueue(4)
    queued: list[Waiter[str]] = []  # in arrival order
    streak: dict[tuple[int, str], int] = {}  # (level, key) -> since when it has waited
    last_served: dict[tuple[int, str], int] = {}
    for step, (op, a, b) in enumerate(operations):
        if op == "enter":
            tier = TIERS[a]
            key = f"{tier.name}-{b}"  # a key belongs to one tier
            waiter = queue.enter(tier, key, 1000, loop.create_future(), float(step))
            assert waiter is not None
            queued.append(waiter)
            streak.setdefault((tier.priority, key), step)
        elif op == "leave" and queued:
            waiter = queued.pop(a % len(queued))
            queue.leave(waiter)
            _end_streak(queued, streak, waiter)
        elif op == "serve":
            waiter = queue.next_waiter()
            if not queued:
                assert waiter is None
                continue
            assert waiter is not None
            top = max(w.tier.priority for w in queued)
            level = waiter.tier.priority
            # Priority: nobody of a higher level waits.
            assert level == top
            # FIFO within a key: it is the key's longest-waiting request.
            assert waiter is next(w for w in queued if w.key == waiter.key)
            # Round robin: every other key of the level that has waited since before this
            # key's previous release has been released since.
            me = (level, waiter.key)
            if me in last_served:
                for other, since in streak.items():
                    if other[0] == level and other != me and since < last_served[me]:
                        assert last_served.get(other, -1) > last_served[me], (other, me)
            last_served[me] = step
            queued.remove(waiter)
            _end_streak(queued, streak, waiter)
        assert queue.waiting == len(queued)


def _end_streak(
    queued: list[Waiter[str]], streak: dict[tuple[int, str], int], waiter: Waiter[str]
) -> None:
    if not any(w.key == waiter.key for w in queued):
        del streak[(waiter.tier.priority, waiter.key)]
