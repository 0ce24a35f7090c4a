"""Balancers are pure: tested on plain views, without an event loop."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from swarmgate.routing.balancers import RoutingFacts, WeightedRoundRobin

FACTS = RoutingFacts("m")


@dataclass(frozen=True)
class View:
    name: str
    weight: float = 1.0
    in_flight: int = 0
    max_concurrent: int = 100


def test_equal_weights_take_turns() -> None:
    views = [View("a"), View("b"), View("c")]
    rr = WeightedRoundRobin()
    assert [rr.choose(views, FACTS) for _ in range(6)] == [0, 1, 2, 0, 1, 2]


def test_weights_interleave_rather_than_burst() -> None:
    views = [View("a", 5), View("b", 1), View("c", 1)]
    rr = WeightedRoundRobin()
    picks = "".join(views[rr.choose(views, FACTS)].name for _ in range(7))
    assert picks == "aabacaa"  # nginx's smooth weighted round robin


@given(st.lists(st.integers(1, 9), min_size=1, max_size=6), st.integers(1, 5))
def test_over_whole_rounds_picks_follow_the_weights_exactly(
    weights: list[int], rounds: int
) -> None:
    views = [View(f"d{i}", w) for i, w in enumerate(weights)]
    rr = WeightedRoundRobin()
    counts = Counter(rr.choose(views, FACTS) for _ in range(sum(weights) * rounds))
    assert [counts[i] for i in range(len(views))] == [w * rounds for w in weights]


def test_a_candidate_sitting_a_turn_out_does_not_skew_the_rest() -> None:
    a, b, c = View("a"), View("b"), View("c")
    rr = WeightedRoundRobin()
    picks = [[a, b, c][rr.choose([a, b, c], FACTS)].name for _ in range(3)]
    picks += [[a, c][rr.choose([a, c], FACTS)].name for _ in range(4)]  # b busy
    assert picks[:3] == ["a", "b", "c"]
    assert Counter(picks[3:]) == {"a": 2, "c": 2}
