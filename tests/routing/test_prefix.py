"""The prefix-cache-aware balancer, over plain views: a shared long system prompt sticks to one
deployment; the index is bounded; a busy holder is passed over; only served requests count."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swarmgate.routing.balancers import RoutingFacts
from swarmgate.routing.prefix import (
    BLOCK_BYTES,
    PrefixAware,
    PrefixIndex,
    PromptFacts,
    blocks_of,
    prompt_text,
)
from swarmgate.routing.resource import ResourceAware
from swarmgate.types import Outcome


@dataclass
class View:
    name: str
    weight: float = 1.0
    in_flight: int = 0
    max_concurrent: int = 1000


def _balancer(**options: float) -> PrefixAware:
    fallback = ResourceAware(rng=random.Random(1), clock=lambda: 0.0)
    return PrefixAware(fallback, **options)  # type: ignore[arg-type]


def _chat(system: str, user: str) -> dict[str, object]:
    return {
        "model": "m",
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
    }


SYSTEMS = [f"You are assistant number {i}. " + "Follow the house rules. " * 200 for i in range(6)]


def _serve(balancer: PrefixAware, views: list[View], payload: dict[str, object]) -> str:
    facts = balancer.facts("m", False, payload)
    name = views[balancer.choose(views, facts)].name
    balancer.finished(name, facts, Outcome.OK, 0.1)
    return name


def test_requests_sharing_a_long_system_prompt_go_to_one_deployment() -> None:
    balancer = _balancer()
    views = [View("a"), View("b"), View("c")]
    where: dict[int, set[str]] = {i: set() for i in range(len(SYSTEMS))}
    for turn in range(10):
        for i, system in enumerate(SYSTEMS):
            where[i].add(_serve(balancer, views, _chat(system, f"question {turn}")))
    assert all(len(names) == 1 for names in where.values())
    # ...and the different prompts are spread, not all on one deployment.
    assert len({next(iter(names)) for names in where.values()}) >= 2


def test_the_longest_matching_prefix_wins() -> None:
    balancer = _balancer()
    views = [View("a"), View("b")]
    base = "x" * (4 * BLOCK_BYTES)
    balancer.index.record(blocks_of([base[: 2 * BLOCK_BYTES]]), "a")
    balancer.index.record(blocks_of([base]), "b")
    facts = PromptFacts.of("m", False, blocks_of([base + "tail"]))
    assert balancer.choose(views, facts) == 1


def test_a_holder_past_the_load_guard_is_passed_over() -> None:
    balancer = _balancer(load_factor=1.5, slack=4)
    facts = balancer.facts("m", False, _chat(SYSTEMS[0], "q"))
    balancer.index.record(facts.blocks, "a")
    assert balancer.choose([View("a", in_flight=11), View("b", in_flight=4)], facts) == 1
    assert balancer.choose([View("a", in_flight=10), View("b", in_flight=4)], facts) == 0  # at it


def test_a_failed_or_refused_request_advertises_no_holder() -> None:
    balancer = _balancer()
    facts = balancer.facts("m", False, _chat(SYSTEMS[0], "q"))
    for outcome in (Outcome.TIMEOUT, Outcome.REFUSED, Outcome.UNREACHABLE, None):
        balancer.finished("a", facts, outcome, 1.0)
    assert len(balancer.index) == 0
    balancer.finished("a", facts, Outcome.OK, 1.0)
    assert balancer.index.matches(facts.blocks) == {"a": len(facts.blocks)}


def test_the_index_is_bounded_and_forgets_the_least_recently_served() -> None:
    index = PrefixIndex(capacity=10)
    for i in range(100):
        index.record([i * 2, i * 2 + 1], f"d{i % 3}")
    assert len(index) == 10
    assert index.matches([0, 1]) == {}
    assert index.matches([198, 199]) == {"d0": 2}


@given(st.lists(st.tuples(st.lists(st.integers(0, 50), max_size=8), st.sampled_from("abcdef"))))
def test_index_property_bounded_holders_and_depths(records: list[tuple[list[int], str]]) -> None:
    index = PrefixIndex(capacity=20)
    for blocks, name in records:
        index.record(blocks, name)
        assert len(index) <= 20
        depth = index.matches(blocks)
        if blocks and len(set(blocks)) == len(blocks):
            assert depth.get(name) == len(blocks)  # just served: it holds the whole prompt
        assert all(0 < d <= len(blocks) for d in depth.values())


def test_a_prompt_nobody_holds_or_a_short_one_is_balanced_by_load() -> None:
    balancer = _balancer()
    views = [View("a", in_flight=3), View("b", in_flight=0)]
    assert balancer.choose(views, balancer.facts("m", False, _chat("short", "q"))) == 1
    assert balancer.choose(views, RoutingFacts("m")) == 1  # no blocks at all


def test_prompt_text_and_blocks() -> None:
    chat = _chat("s" * 3000, "u")
    assert prompt_text(chat) == ["\x1esystem\x1f", "s" * 3000, "\x1euser\x1f", "u"]
    parts = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url"}]}
        ]
    }
    assert prompt_text(parts) == ["\x1euser\x1f", "hi"]
    assert prompt_text({"prompt": "p"}) == ["p"]
    assert prompt_text({"prompt": ["p", "q"]}) == ["p"]
    assert prompt_text({"input": 3}) == []
    one, two = blocks_of(["a" * 3000]), blocks_of(["a" * 2048 + "b" * 952])
    assert len(one) == 2 and one == two  # a partial block is not hashed
    assert blocks_of(["b" + "a" * 2999])[1] != one[1]  # block 1's hash covers block 0 too


def test_sessions_of_users_spread_over_deployments_by_load() -> None:
    # Many distinct prompts: the fallback decides each first placement, so no herd.
    balancer = _balancer()
    views = [View("a"), View("b"), View("c"), View("d")]
    picks: Counter[str] = Counter()
    for i in range(40):
        facts = balancer.facts("m", False, _chat(f"{i} " + "x" * 3000, "q"))
        chosen = views[balancer.choose(views, facts)]
        chosen.in_flight += 1
        picks[chosen.name] += 1
    assert max(picks.values()) <= 10


def test_options_are_checked() -> None:
    with pytest.raises(ValueError):
        _balancer(load_factor=0.5)
    with pytest.raises(ValueError):
        PrefixIndex(0)
