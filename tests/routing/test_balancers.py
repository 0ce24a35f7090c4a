"""Balancers are pure: tested on plain views, without an event loop."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, replace
from math import ceil

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmgate.config import STRATEGY_OPTIONS, Balancing
from swarmgate.routing.balancers import (
    Balancer,
    ConsistentHash,
    CostAware,
    DeploymentView,
    LeastOutstanding,
    PowerOfTwo,
    RoundRobin,
    RoutingFacts,
    SessionKey,
    WeightedRoundRobin,
    balancer_for,
)
from swarmgate.types import Principal, Role

FACTS = RoutingFacts("m")


@dataclass(frozen=True)
class View:
    name: str
    weight: float = 1.0
    in_flight: int = 0
    max_concurrent: int = 100
    per_request: float = 0.0
    per_1k: float = 0.0  # input and output alike

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return self.per_request + (prompt_tokens + completion_tokens) * self.per_1k / 1000


def _load(view: DeploymentView) -> float:
    return view.in_flight / view.weight


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


def test_seed_004s_fractional_weights_share_the_picks() -> None:
    views = [View("mixtral", 1.0), View("hermes", 0.8), View("openchat", 0.6), View("phi", 0.4)]
    rr = WeightedRoundRobin()
    counts = Counter(views[rr.choose(views, FACTS)].name for _ in range(280))
    for view in views:
        assert abs(counts[view.name] - 100 * view.weight) <= 1, counts


def test_a_candidate_sitting_a_turn_out_does_not_skew_the_rest() -> None:
    a, b, c = View("a"), View("b"), View("c")
    rr = WeightedRoundRobin()
    picks = [[a, b, c][rr.choose([a, b, c], FACTS)].name for _ in range(3)]
    picks += [[a, c][rr.choose([a, c], FACTS)].name for _ in range(4)]  # b busy
    assert picks[:3] == ["a", "b", "c"]
    assert Counter(picks[3:]) == {"a": 2, "c": 2}


def test_plain_round_robin_ignores_weights() -> None:
    views = [View("a", 5), View("b", 1), View("c", 1)]
    rr = RoundRobin()
    assert [rr.choose(views, FACTS) for _ in range(6)] == [0, 1, 2, 0, 1, 2]


def test_round_robin_keeps_turns_when_a_retry_offers_fewer_candidates() -> None:
    # A refuses connections; each request tries it or B first, in turn, and retries the other.
    a, b = View("a"), View("b")
    rr = RoundRobin()
    firsts = []
    for _ in range(4):
        first = [a, b][rr.choose([a, b], FACTS)]
        firsts.append(first.name)
        if first is a:
            rr.choose([b], FACTS)
    assert firsts == ["a", "b", "a", "b"]


@given(
    st.lists(st.tuples(st.integers(0, 20), st.sampled_from([0.5, 1, 2, 3])), min_size=1),
    st.integers(0, 2**32),
)
def test_least_outstanding_picks_a_least_loaded_candidate(
    loads: list[tuple[int, float]], seed: int
) -> None:
    views = [View(f"d{i}", w, n) for i, (n, w) in enumerate(loads)]
    chosen = LeastOutstanding(rng=random.Random(seed)).choose(views, FACTS)
    assert _load(views[chosen]) == min(_load(v) for v in views)


def test_least_outstanding_breaks_ties_at_random_in_proportion_to_weight() -> None:
    views = [View("big", 3), View("small", 1)]
    lo = LeastOutstanding(rng=random.Random(7))
    counts = Counter(lo.choose(views, FACTS) for _ in range(4000))
    assert 0.72 < counts[0] / 4000 < 0.78  # idle: 3 to 1, though neither is busier


def test_least_outstanding_may_weigh_in_flight_against_capacity() -> None:
    views = [
        View("large", in_flight=4, max_concurrent=8),
        View("small", in_flight=3, max_concurrent=4),
    ]
    assert LeastOutstanding().choose(views, FACTS) == 1  # 3 in flight < 4 in flight
    assert LeastOutstanding(relative_to="capacity").choose(views, FACTS) == 0  # half < 3/4


@given(st.lists(st.integers(0, 20), min_size=1, max_size=8), st.integers(0, 2**32))
def test_power_of_two_never_takes_a_deployment_busier_than_all_the_others(
    loads: list[int], seed: int
) -> None:
    views = [View(f"d{i}", in_flight=n) for i, n in enumerate(loads)]
    chosen = views[PowerOfTwo(rng=random.Random(seed)).choose(views, FACTS)]
    as_busy = [v for v in views if v.in_flight >= chosen.in_flight]  # the other drawn among them
    assert len(as_busy) >= min(2, len(views))


def test_power_of_two_draws_in_proportion_to_weight() -> None:
    views = [View("a", 4), View("b", 1), View("c", 1), View("d", 1)]  # all idle
    p2 = PowerOfTwo(rng=random.Random(3))
    counts = Counter(p2.choose(views, FACTS) for _ in range(7000))
    # Idle, the two drawn tie and weight decides again: "a" is drawn in most pairs and wins
    # 4 in 5 of them.
    assert counts[0] > 2 * max(counts[1], counts[2], counts[3])


@pytest.mark.parametrize("strategy", [LeastOutstanding, PowerOfTwo])
@pytest.mark.parametrize("weights", [(1, 1, 1, 1), (1, 1, 2, 4)])
@pytest.mark.parametrize("seed", range(5))
def test_a_burst_of_200_gives_no_deployment_more_than_1_5x_its_fair_share(
    strategy: type[LeastOutstanding | PowerOfTwo], weights: tuple[int, ...], seed: int
) -> None:
    # Every request still in flight when the next arrives, as in a real burst.
    views = [View(f"d{i}", w) for i, w in enumerate(weights)]
    balancer = strategy(rng=random.Random(seed))
    for _ in range(200):
        i = balancer.choose(views, FACTS)
        views[i] = replace(views[i], in_flight=views[i].in_flight + 1)
    total = sum(weights)
    for view in views:
        fair = 200 * view.weight / total
        assert view.in_flight <= 1.5 * fair, views
        assert abs(view.in_flight - fair) <= 4, views  # a weighted random pick strays by ~20


SESSION = SessionKey(["header"])


def _sticky(key: str) -> RoutingFacts:
    return RoutingFacts("m", False, key)


def test_a_session_sticks_to_one_deployment_while_loads_are_within_bounds() -> None:
    views = [View(f"d{i}", in_flight=2) for i in range(4)]
    ch = ConsistentHash(SESSION)
    for key in (f"session-{k}" for k in range(20)):
        picks = {ch.choose(views, _sticky(key)) for _ in range(10)}
        assert len(picks) == 1
    owners = Counter(ch.choose(views, _sticky(f"session-{k}")) for k in range(400))
    assert len(owners) == 4 and min(owners.values()) > 60  # sessions spread over the ring


def test_an_overloaded_owner_hands_its_sessions_on_until_it_recovers() -> None:
    views = [View(f"d{i}") for i in range(4)]
    ch = ConsistentHash(SESSION, load_factor=1.25)
    owner = ch.choose(views, _sticky("s"))
    # 3 in flight on each of the others and 4 on the owner: with this request 14, a share of
    # 3.5, a bound of ceil(1.25 * 3.5) = 5; the owner holds 4 and keeps the session.
    busy = [replace(v, in_flight=4 if i == owner else 3) for i, v in enumerate(views)]
    assert ch.choose(busy, _sticky("s")) == owner
    busy[owner] = replace(busy[owner], in_flight=20)  # 30 in all: a bound of 10
    moved = ch.choose(busy, _sticky("s"))
    assert moved != owner
    assert ch.choose(busy, _sticky("s")) == moved  # to one place, the next on the ring
    assert ch.choose(views, _sticky("s")) == owner  # back once the load is down


@settings(deadline=None)  # two rings of up to 3,840 points each: slow on a busy machine
@given(
    st.lists(st.tuples(st.integers(0, 30), st.sampled_from([1, 2, 4])), min_size=1, max_size=6),
    st.text(min_size=1, max_size=12),
    st.sampled_from([1.0, 1.25, 2.0]),
)
def test_consistent_hashing_never_exceeds_the_load_bound(
    loads: list[tuple[int, float]], key: str, factor: float
) -> None:
    views = [View(f"d{i}", w, n) for i, (n, w) in enumerate(loads)]
    chosen = views[ConsistentHash(SESSION, load_factor=factor).choose(views, _sticky(key))]
    in_flight = sum(v.in_flight for v in views) + 1
    bound = ceil(factor * in_flight * chosen.weight / sum(v.weight for v in views))
    assert chosen.in_flight + 1 <= bound
    # Another replica, with its own ring, sends the same session to the same deployment.
    assert views[ConsistentHash(SESSION, load_factor=factor).choose(views, _sticky(key))] == chosen


def _owners(ch: ConsistentHash, views: list[View], keys: list[str]) -> dict[str, str]:
    return {key: views[ch.choose(views, _sticky(key))].name for key in keys}


def test_removing_a_deployment_moves_only_its_own_sessions() -> None:
    views = [View(f"d{i}") for i in range(5)]
    keys = [f"user-{k}" for k in range(2000)]
    ch = ConsistentHash(SESSION)
    before = _owners(ch, views, keys)
    gone = views.pop(2)
    after = _owners(ConsistentHash(SESSION), views, keys)  # the pool a reload builds
    moved = [k for k in keys if after[k] != before[k]]
    assert all(before[k] == gone.name for k in moved)
    assert 0.12 < len(moved) / len(keys) < 0.28  # about 1/5
    assert _owners(ch, views, keys) == after  # the same where it is merely not a candidate


def test_adding_a_deployment_moves_sessions_only_to_it() -> None:
    views = [View(f"d{i}") for i in range(4)]
    keys = [f"user-{k}" for k in range(2000)]
    ch = ConsistentHash(SESSION)
    before = _owners(ch, views, keys)
    after = _owners(ch, [*views, View("d4")], keys)
    moved = [k for k in keys if after[k] != before[k]]
    assert all(after[k] == "d4" for k in moved)
    assert 0.12 < len(moved) / len(keys) < 0.28


def test_weight_gives_a_deployment_a_larger_share_of_the_sessions() -> None:
    views = [View("big", 3), View("small", 1)]
    owners = Counter(
        _owners(ConsistentHash(SESSION), views, [f"k{k}" for k in range(2000)]).values()
    )
    assert 0.68 < owners["big"] / 2000 < 0.82


def test_a_request_without_a_session_key_is_balanced_by_load() -> None:
    views = [View("a", in_flight=5), View("b", in_flight=1), View("c", in_flight=3)]
    assert ConsistentHash(SESSION).choose(views, FACTS) == 1


def test_the_session_key_comes_from_the_first_source_the_request_has() -> None:
    caller = Principal("alice", Role.USER, frozenset(), key_id="k-123")
    headers = [(b"content-type", b"application/json"), (b"x-session-id", b"conv-9")]
    body = {"user": "user-7"}
    assert SessionKey(["header"]).of(headers, body, caller) == "conv-9"
    assert SessionKey(["header"], "X-Conversation").of(headers, body, caller) is None
    assert SessionKey(["user"]).of(headers, body, caller) == "user-7"
    assert SessionKey(["user"]).of(headers, {"user": 7}, caller) is None
    assert SessionKey(["key"]).of(headers, body, caller) == "k-123"
    assert SessionKey(["key"]).of(headers, body, Principal("sub-1", Role.USER, frozenset())) == (
        "sub-1"
    )
    anonymous = Principal("anonymous", Role.GUEST, frozenset(), via="anonymous")
    assert SessionKey(["key"]).of(headers, body, anonymous) is None  # all of them share it
    assert SessionKey(["header", "user", "key"]).of([], body, caller) == "user-7"
    assert SessionKey(["header", "user"]).of([(b"x-session-id", b"")], {}, None) is None


def test_cost_aware_takes_the_cheapest_then_the_next_when_it_is_full() -> None:
    cheap = View("cheap", per_request=0.01)
    mid = View("mid", per_1k=0.02)  # 1250 tokens of a typical request: 0.025
    dear = View("dear", per_request=0.1)
    ca = CostAware()
    assert ca.choose([dear, mid, cheap], FACTS) == 2
    assert ca.choose([dear, mid], FACTS) == 1  # cheap is full: not a candidate
    assert CostAware(prompt_tokens=100, completion_tokens=100).choose([cheap, mid], FACTS) == 1


def test_cost_aware_breaks_price_ties_by_load() -> None:
    views = [View("a", in_flight=4), View("b", in_flight=1), View("c", per_request=1.0)]
    assert CostAware().choose(views, FACTS) == 1


@given(
    st.lists(
        st.tuples(st.sampled_from([0.0, 0.01, 0.02]), st.integers(0, 9)), min_size=1, max_size=6
    ),
    st.integers(0, 2**32),
)
def test_cost_aware_never_takes_a_dearer_deployment_or_a_busier_equal(
    offers: list[tuple[float, int]], seed: int
) -> None:
    views = [View(f"d{i}", in_flight=n, per_request=p) for i, (p, n) in enumerate(offers)]
    chosen = views[CostAware(rng=random.Random(seed)).choose(views, FACTS)]
    cheapest = min(v.per_request for v in views)
    assert chosen.per_request == cheapest
    assert chosen.in_flight == min(v.in_flight for v in views if v.per_request == cheapest)


BUILT: dict[str, type[Balancer]] = {
    "least_outstanding": LeastOutstanding,
    "round_robin": RoundRobin,
    "weighted_round_robin": WeightedRoundRobin,
    "power_of_two": PowerOfTwo,
    "consistent_hash": ConsistentHash,
    "cost": CostAware,
}


def test_every_strategy_the_config_takes_builds_its_balancer() -> None:
    assert set(BUILT) == set(STRATEGY_OPTIONS)
    for name, kind in BUILT.items():
        built = balancer_for(Balancing.model_validate(name))
        assert type(built) is kind
        assert (built.session is not None) == (name == "consistent_hash")
    sticky = balancer_for(
        Balancing.model_validate({"strategy": "consistent_hash", "header": "X-A"})
    )
    assert sticky.session is not None
    assert sticky.session.of([(b"x-a", b"s1")], {}, None) == "s1"
