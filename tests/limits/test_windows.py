"""Exact sliding windows: at most N in any window; refunds and debt; leases that expire."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from swarmgate.limits.windows import Leases, SlidingLog


def admit(log: SlidingLog, now: float, cost: float, limit: float) -> bool:
    log.trim(now)
    if log.wait(now, cost, limit):
        return False
    log.add(now, cost)
    return True


@given(
    limit=st.integers(1, 20),
    gaps=st.lists(st.floats(0, 3), min_size=1, max_size=200),
)
def test_never_more_than_the_limit_in_any_window(limit: int, gaps: list[float]) -> None:
    log, now, admitted = SlidingLog(10.0), 0.0, []
    for gap in gaps:
        now += gap
        if admit(log, now, 1, limit):
            admitted.append(now)
    # Any window (t - 10, t] holds at most ``limit`` admissions.
    for i, start in enumerate(admitted):
        inside = [t for t in admitted[i:] if t < start + 10.0]
        assert len(inside) <= limit


@given(
    limit=st.integers(1, 20),
    gaps=st.lists(st.floats(0.01, 3), min_size=1, max_size=100),
)
def test_a_refusal_waits_exactly_until_it_fits(limit: int, gaps: list[float]) -> None:
    log, now = SlidingLog(10.0), 0.0
    for gap in gaps:
        now += gap
        log.trim(now)
        wait = log.wait(now, 1, limit)
        if wait:
            later = now + wait + 1e-9  # (float rounding of at + window - now + now)
            probe = SlidingLog(10.0)
            probe.times.extend(log.times)
            probe.amounts.extend(log.amounts)
            probe.total = log.total
            probe.trim(later)
            assert probe.wait(later, 1, limit) == 0
        else:
            log.add(now, 1)


def test_tokens_refunded_in_the_window_and_debt_counted_from_now() -> None:
    log = SlidingLog(60.0)
    entry = log.add(0.0, 1000)  # reserved
    log.lower(entry, 200, 1.0)  # settled to 200
    assert log.total == 200
    assert log.wait(1.0, 800, 1000) == 0 and log.wait(1.0, 801, 1000) > 0
    log.add(30.0, 500)  # overshoot of a later answer: debt from now
    log.trim(61.0)
    assert log.total == 500  # the refunded entry left; the debt stays until 90 s
    assert log.wait(61.0, 600, 1000) == 29.0


def test_a_refund_never_frees_what_has_slid_out() -> None:
    log = SlidingLog(60.0)
    entry = log.add(0.0, 100)
    log.add(50.0, 100)
    log.trim(70.0)
    log.lower(entry, 0, 70.0)
    assert log.total == 100


def test_a_handle_names_its_entry_after_trims() -> None:
    log = SlidingLog(10.0)
    handles = [log.add(float(t), 10) for t in range(20)]
    log.trim(15.0)  # entries 0..5 slid out
    log.lower(handles[12], 4, 15.0)
    assert list(log.amounts)[12 - 6] == 4 and log.total == 14 * 10 - 6
    log.lower(handles[3], 0, 15.0)  # slid out: nothing changes
    assert log.total == 14 * 10 - 6


def test_a_reservation_larger_than_the_limit_never_fits() -> None:
    assert math.isinf(SlidingLog(60.0).wait(0.0, 2000, 1000))


def test_leases_expire_so_a_dead_holder_leaks_none_past_its_lease() -> None:
    leases = Leases()
    leases.take("a", 10.0)
    leases.take("b", 20.0)
    assert leases.wait(5.0, 2) == 1.0  # full: try again in a second
    assert leases.wait(10.0, 2) == 0.0  # a's lease expired
    leases.release("b")
    assert leases.in_use(11.0) == 0
