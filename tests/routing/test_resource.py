"""The resource-aware balancer, as a pure function over snapshots: a stale scrape cannot make a
hot spot; a fresh one steers; the gateway's own in-flight count always counts."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmgate.routing.balancers import RoutingFacts
from swarmgate.routing.load import Load
from swarmgate.routing.resource import ResourceAware, cost, freshness
from swarmgate.types import Outcome

FACTS = RoutingFacts("m")
NOW = 1000.0


@dataclass
class View:
    name: str
    weight: float = 1.0
    in_flight: int = 0
    max_concurrent: int = 1000
    load: Load | None = None


def _balancer(seed: int = 0) -> ResourceAware:
    return ResourceAware(rng=random.Random(seed), clock=lambda: NOW)


def _burst(balancer: ResourceAware, views: list[View], n: int) -> Counter[str]:
    """``n`` requests arriving at once: none finishes, each pick sees the ones before it."""
    picks: Counter[str] = Counter()
    for _ in range(n):
        chosen = views[balancer.choose(views, FACTS)]
        chosen.in_flight += 1
        picks[chosen.name] += 1
    return picks


figures = st.tuples(
    st.integers(0, 50), st.integers(0, 50), st.none() | st.floats(0, 1, allow_nan=False)
)


@settings(max_examples=200, deadline=None)
@given(st.lists(figures, min_size=4, max_size=4), st.integers(0, 2**32))
def test_a_burst_over_scrapes_5_s_stale_gives_none_more_than_1_5x_its_share(
    scraped: list[tuple[int, int, float | None]], seed: int
) -> None:
    # Whatever the servers said 5 s ago (one idle, the others full, or anything between),
    # 200 requests at once spread: no deployment takes more than 1.5x its fair 50.
    views = [
        View(f"d{i}", load=Load(NOW - 5.0, waiting, running, kv))
        for i, (waiting, running, kv) in enumerate(scraped)
    ]
    picks = _burst(_balancer(seed), views, 200)
    assert max(picks.values()) <= 1.5 * 200 / 4


def test_the_herd_of_llm_d_298_all_idle_when_scraped() -> None:
    views = [View(f"d{i}", load=Load(NOW - 5.0, 0, 0, 0.0)) for i in range(4)]
    assert set(_burst(_balancer(), views, 200).values()) == {50}


def test_a_fresh_scrape_steers_away_from_a_busy_server() -> None:
    # Other clients keep d0 busy: the gateway sees none of that in its own counts.
    views = [View("d0", load=Load(NOW, 30, 8, 0.9)), View("d1", load=Load(NOW, 0, 0, 0.0))]
    picks = _burst(_balancer(), views, 40)
    assert picks["d1"] > 2 * picks["d0"]


def test_old_figures_count_less_and_stale_ones_not_at_all() -> None:
    assert freshness(Load(NOW, 0, 0), NOW, 2.0, 10.0) == 1.0
    assert freshness(Load(NOW - 2.0, 0, 0), NOW, 2.0, 10.0) == pytest.approx(0.5)
    assert freshness(Load(NOW - 10.0, 0, 0), NOW, 2.0, 10.0) == 0.0
    assert freshness(None, NOW, 2.0, 10.0) == 0.0
    stale = View("a", in_flight=2, load=Load(NOW - 11.0, 100, 100, 1.0))
    assert cost(stale, NOW, half_life=2.0, stale_after=10.0, kv_requests=4.0) == 3.0


def test_right_after_a_scrape_each_pick_still_costs_a_full_request() -> None:
    # Subtracting the gateway's own count from the scraped one would leave the cost flat in
    # in_flight (the herd); each pick must raise it.
    views = [View("a", load=Load(NOW, 0, 10, None)), View("b", load=Load(NOW, 0, 10, None))]
    assert set(_burst(_balancer(), views, 20).values()) == {10}


@given(
    st.integers(0, 100),
    st.integers(0, 100),
    st.integers(0, 100),
    st.floats(0, 30, allow_nan=False),
    st.floats(0.1, 10, allow_nan=False),
)
def test_cost_grows_with_the_gateways_own_load_and_falls_with_weight(
    in_flight: int, waiting: int, running: int, age: float, weight: float
) -> None:
    load = Load(NOW - age, waiting, running, 0.5)

    def c(view: View) -> float:
        return cost(view, NOW, half_life=2.0, stale_after=10.0, kv_requests=4.0)

    base = c(View("a", weight, in_flight, load=load))
    assert c(View("a", weight, in_flight + 1, load=load)) > base
    assert c(View("a", weight * 2, in_flight, load=load)) < base
    assert base >= (in_flight + 1) / weight  # scraped figures only ever add


def test_equal_costs_are_broken_at_random() -> None:
    balancer = _balancer()
    views = [View("a"), View("b"), View("c")]
    assert Counter(balancer.choose(views, FACTS) for _ in range(300)).keys() == {0, 1, 2}


def test_a_slow_deployment_is_given_fewer_requests() -> None:
    balancer = _balancer()
    for _ in range(5):
        balancer.finished("slow", FACTS, Outcome.OK, 2.0)
        balancer.finished("fast", FACTS, Outcome.OK, 0.5)
    balancer.finished("fast", FACTS, Outcome.TIMEOUT, 60.0)  # not a latency
    picks = _burst(balancer, [View("slow"), View("fast")], 60)
    assert picks["fast"] >= 2 * picks["slow"]


@given(
    st.lists(
        st.tuples(
            st.integers(0, 20), st.floats(0.5, 4, allow_nan=False), figures, st.floats(0, 15)
        ),
        min_size=2,
        max_size=5,
    )
)
def test_choose_takes_a_candidate_of_least_cost(
    candidates: list[tuple[int, float, tuple[int, int, float | None], float]],
) -> None:
    # choose() inlines cost(): the two must agree.
    views = [
        View(f"d{i}", weight, in_flight, load=Load(NOW - age, waiting, running, kv))
        for i, (in_flight, weight, (waiting, running, kv), age) in enumerate(candidates)
    ]
    costs = [cost(v, NOW, half_life=2.0, stale_after=10.0, kv_requests=4.0) for v in views]
    chosen = _balancer().choose(views, FACTS)
    assert costs[chosen] == pytest.approx(min(costs))


def test_a_slow_deployment_is_not_starved_while_the_fast_one_queues() -> None:
    # In steady state a deployment 4x slower holds its requests 4x longer, so its in-flight
    # count already shows its slowness (Little's law). Its latency counted in full on top, it
    # would take the next request only once the fast one held 4x its count (its share falling
    # with the square of its latency); counted as a square root, at 2x.
    balancer = _balancer()
    for _ in range(5):
        balancer.finished("slow", FACTS, Outcome.OK, 2.0)
        balancer.finished("fast", FACTS, Outcome.OK, 0.5)
    views = [View("slow", in_flight=2), View("fast", in_flight=6)]
    assert views[balancer.choose(views, FACTS)].name == "slow"
    views = [View("slow", in_flight=2), View("fast", in_flight=4)]
    assert views[balancer.choose(views, FACTS)].name == "fast"
