"""The circuit breaker as a pure state machine over (state, clock)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from swarmgate.routing.breaker import Breaker, CircuitState


def test_it_opens_after_threshold_consecutive_failures_only() -> None:
    b = Breaker(threshold=5, open_seconds=60)
    for _ in range(4):
        b.failure(0.0)
    b.success()  # not consecutive: counting starts again
    for _ in range(4):
        b.failure(1.0)
        assert b.allows(1.0) and b.state is CircuitState.CLOSED
    b.failure(2.0)
    assert b.state is CircuitState.OPEN and b.opens == 1
    assert not b.allows(2.0) and not b.allows(61.9)


def test_after_open_seconds_it_half_opens_for_a_bounded_number_of_trials() -> None:
    b = Breaker(threshold=1, open_seconds=60, trials=2)
    b.failure(0.0)
    assert b.allows(60.0) and b.state is CircuitState.HALF_OPEN
    b.admit()
    assert b.allows(60.0)
    b.admit()
    assert not b.allows(60.0)  # both trials out
    b.release()  # one ended without a verdict (the client left)
    assert b.allows(60.0)


def test_a_trial_success_closes_and_a_trial_failure_opens_again() -> None:
    b = Breaker(threshold=1, open_seconds=10)
    b.failure(0.0)
    assert b.allows(10.0)
    b.admit()
    b.failure(10.5)
    assert b.state is CircuitState.OPEN and not b.allows(20.0) and b.allows(20.5)
    b.admit()
    b.success()
    assert b.state is CircuitState.CLOSED and b.allows(20.5) and b.opens == 2


def test_a_good_probe_half_opens_an_open_circuit_at_once() -> None:
    b = Breaker(threshold=1, open_seconds=60)
    b.failure(0.0)
    b.probe_ok()
    assert b.state is CircuitState.HALF_OPEN and b.allows(1.0)


def test_a_late_failure_while_open_does_not_extend_it() -> None:
    b = Breaker(threshold=1, open_seconds=10)
    b.failure(0.0)
    b.failure(9.0)  # a request sent before it opened
    assert b.allows(10.0)


EVENTS = st.lists(
    st.tuples(
        st.sampled_from(["pick", "success", "failure", "release", "probe"]),
        st.floats(min_value=0, max_value=5),
    ),
    max_size=200,
)


@given(EVENTS, st.integers(1, 6), st.integers(1, 3))
def test_invariants_hold_for_any_history(
    events: list[tuple[str, float]], threshold: int, trials: int
) -> None:
    b = Breaker(threshold=threshold, open_seconds=10.0, trials=trials)
    now = 0.0
    for kind, step in events:
        now += step
        if kind == "pick":
            if b.allows(now):
                b.admit()
            elif b.state is CircuitState.OPEN:
                # An open circuit lets nothing through before its time is up.
                assert now < b.opened_at + b.open_seconds
        elif kind == "success":
            b.success()
        elif kind == "failure":
            before = b.state
            b.failure(now)
            if before is CircuitState.HALF_OPEN:
                assert b.state is CircuitState.OPEN
        elif kind == "release":
            b.release()
        else:
            b.probe_ok()
        assert 0 <= b.trials_out <= trials  # never more trials out than allowed
        assert b.state is not CircuitState.CLOSED or b.failures < threshold
        if b.state is not CircuitState.HALF_OPEN:
            assert b.trials_out == 0


@given(st.integers(1, 20))
def test_exactly_threshold_failures_open_a_closed_circuit(threshold: int) -> None:
    b = Breaker(threshold=threshold)
    for i in range(threshold):
        assert b.state is CircuitState.CLOSED, i
        b.failure(float(i))
    assert b.state is CircuitState.OPEN
