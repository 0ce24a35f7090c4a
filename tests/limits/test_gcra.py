"""GCRA: a burst at once, then the steady rate; never more than rate * t + burst in t."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from swarmgate.limits.gcra import gcra, remaining, reset


def test_a_burst_passes_at_once_then_one_per_interval() -> None:
    tat, interval, burst = 0.0, 0.5, 3
    allowed = []
    for _ in range(5):
        tat, wait = gcra(tat, 10.0, interval, burst)
        allowed.append(wait == 0)
    assert allowed == [True, True, True, False, False]
    # The refusal says when: one interval after the burst was taken.
    assert gcra(tat, 10.0, interval, burst)[1] == 0.5
    assert gcra(tat, 10.5, interval, burst)[1] == 0.0


def test_remaining_and_reset_describe_the_bucket() -> None:
    tat = 0.0
    assert remaining(tat, 5.0, 1.0, 4) == 4
    tat, _ = gcra(tat, 5.0, 1.0, 4)
    assert remaining(tat, 5.0, 1.0, 4) == 3
    assert reset(tat, 5.0) == 1.0


@given(
    rate=st.floats(0.5, 50),
    burst=st.integers(1, 20),
    gaps=st.lists(st.floats(0, 0.5), min_size=1, max_size=300),
)
def test_never_more_than_rate_times_span_plus_burst(
    rate: float, burst: int, gaps: list[float]
) -> None:
    interval, tat, now, admitted = 1 / rate, 0.0, 100.0, []
    for gap in gaps:
        now += gap
        tat, wait = gcra(tat, now, interval, burst)
        if wait == 0:
            admitted.append(now)
        else:
            # A refusal's wait is exact: the request would pass then, and not before.
            assert gcra(tat, now + wait, interval, burst)[1] == 0
    for i, start in enumerate(admitted):
        for j in range(i, len(admitted)):
            span = admitted[j] - start
            assert j - i + 1 <= burst + span * rate + 1e-6
