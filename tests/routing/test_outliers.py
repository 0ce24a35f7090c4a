"""Passive outlier detection: pure decisions over a pool's windows, and the sweep."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from swarmgate.config import OutlierDetection
from swarmgate.routing.health import DeploymentHealth
from swarmgate.routing.outliers import Window, decide, ejection_seconds, max_ejected, sweep
from swarmgate.types import Outcome

CONFIG = OutlierDetection()  # 5 in a row, or >= 50% of >= 10; at most 50% of the pool


def _ok(n: int) -> Window:
    return Window(n, 0, 0, False)


def test_failures_in_a_row_or_a_high_failure_rate_make_an_outlier() -> None:
    windows = [_ok(20), Window(2, 5, 5, False), Window(6, 6, 1, False), Window(3, 4, 0, False)]
    # #1: five in a row; #2: half of 12 failed; #3: too few requests to judge.
    assert decide(windows, OutlierDetection(max_ejection_percent=100)) == [1, 2]


def test_the_worst_go_first_and_never_more_than_the_cap() -> None:
    windows = [Window(5, 5, 0, False), Window(1, 9, 0, False), _ok(10), _ok(10)]
    assert decide(windows, CONFIG) == [1, 0]  # 50% of 4
    assert decide(windows, OutlierDetection(max_ejection_percent=25)) == [1]
    already = [Window(0, 10, 0, True), *windows[1:]]
    assert decide(already, OutlierDetection(max_ejection_percent=25)) == []


def test_one_of_two_may_be_ejected_but_a_lone_deployment_never() -> None:
    assert max_ejected(1, 100) == 0
    assert max_ejected(2, 10) == 1  # rounded down to 0, but one in a pool of two or more
    assert max_ejected(10, 10) == 1 and max_ejected(10, 35) == 3 and max_ejected(5, 0) == 0
    assert decide([Window(0, 50, 50, False)], CONFIG) == []


@given(
    st.lists(
        st.tuples(st.integers(0, 50), st.integers(0, 50), st.integers(0, 10), st.booleans()),
        max_size=12,
    ),
    st.floats(0, 100),
)
def test_the_cap_always_holds(raw: list[tuple[int, int, int, bool]], percent: float) -> None:
    windows = [Window(*w) for w in raw]
    config = OutlierDetection(max_ejection_percent=percent)
    chosen = decide(windows, config)
    assert len(set(chosen)) == len(chosen)
    assert all(not windows[i].ejected for i in chosen)
    ejected = sum(w.ejected for w in windows)
    assert len(chosen) <= max(0, max_ejected(len(windows), percent) - ejected)


def test_ejections_grow_with_repetition_up_to_the_maximum() -> None:
    assert [ejection_seconds(n, CONFIG) for n in (1, 2, 3, 20)] == [30, 60, 90, 300]


def test_a_sweep_ejects_starts_a_new_window_and_the_ejection_runs_out() -> None:
    now = [100.0]
    sick, well = DeploymentHealth(clock=lambda: now[0]), DeploymentHealth(clock=lambda: now[0])
    for _ in range(6):  # one in three fails: never five in a row, so no breaker trips...
        sick.observe(Outcome.SERVER_ERROR)
        sick.observe(Outcome.OK)
        sick.observe(Outcome.SERVER_ERROR)
        well.observe(Outcome.OK)
    assert sick.routable  # ...but the failure rate (12 of 18) stands out
    assert sweep([sick, well], CONFIG, now[0]) == 1
    assert not sick.routable and not sick.admits() and well.routable
    assert sick.ok == sick.failed == 0  # a new window
    now[0] += 30.0
    assert sick.admits() and sick.routable  # back after base_ejection_seconds
    for _ in range(10):
        sick.observe(Outcome.SERVER_ERROR)
        sick.observe(Outcome.OK)
    sweep([sick, well], CONFIG, now[0])
    assert sick.ejected_until == now[0] + 60.0  # the second time: twice as long


def test_a_deployment_whose_circuit_is_open_is_left_to_its_breaker() -> None:
    now = 0.0
    open_, well = DeploymentHealth(clock=lambda: now), DeploymentHealth(clock=lambda: now)
    for _ in range(12):
        open_.observe(Outcome.SERVER_ERROR)  # opens at five
        well.observe(Outcome.OK)
    assert sweep([open_, well], CONFIG, now) == 0


def test_probes_bringing_a_deployment_back_end_its_ejection() -> None:
    h = DeploymentHealth()
    h.eject(h.clock(), 300)
    for _ in range(3):
        h.probed(False)
    for _ in range(2):
        h.probed(True)
    assert h.routable
