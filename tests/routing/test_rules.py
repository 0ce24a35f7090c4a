"""``model: "auto"``: what a request needs, and the cheapest model that has it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swarmgate.errors import BadRequest
from swarmgate.routing.policy import Condition, Rule
from swarmgate.routing.rules import (
    Candidate,
    Facts,
    admitted,
    choose,
    facts_of,
    needs_of,
    prompt_tokens_of,
)

IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}


def candidate(
    name: str, price: float, caps: tuple[str, ...] = (), window: int | None = None
) -> Candidate:
    return Candidate(name, frozenset(caps), window, ((0.0, price, price),))


SMALL = candidate("small", 0.1, window=100)
TOOLS = candidate("tools", 0.5, ("tools", "json_schema"), window=8000)
VISION = candidate("vision", 2.0, ("tools", "vision"), window=100_000)
FLEET = (VISION, TOOLS, SMALL)


def facts(tokens: int = 10, needs: tuple[str, ...] = (), **kw: object) -> Facts:
    return Facts(tokens, 16, frozenset(needs), **kw)  # type: ignore[arg-type]


def test_needs_are_read_from_the_body() -> None:
    assert needs_of({"messages": [{"role": "user", "content": "hi"}]}) == frozenset()
    assert needs_of({"tools": [{"type": "function"}]}) == {"tools"}
    assert needs_of({"tools": []}) == frozenset()
    assert needs_of({"messages": [{"role": "user", "content": [IMAGE]}]}) == {"vision"}
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}
    assert needs_of({"response_format": schema}) == {"json_schema"}
    assert needs_of({"response_format": {"type": "json_object"}}) == frozenset()


def test_prompt_tokens_are_estimated_from_text_and_images() -> None:
    text = {"messages": [{"role": "user", "content": "x" * 400}]}
    assert prompt_tokens_of(text) == 100
    parts = [{"type": "text", "text": "y" * 40}, IMAGE]
    assert prompt_tokens_of({"messages": [{"content": parts}]}) == 10 + 85
    assert prompt_tokens_of({"prompt": ["ab", "cd"]}) == 1


def test_the_cheapest_capable_model_wins() -> None:
    assert choose(FLEET, (), facts()) == "small"
    assert choose(FLEET, (), facts(needs=("tools",))) == "tools"
    assert choose(FLEET, (), facts(needs=("vision",))) == "vision"
    assert choose(FLEET, (), facts(needs=("tools", "json_schema"))) == "tools"


def test_a_long_prompt_skips_models_whose_window_it_overflows() -> None:
    assert choose(FLEET, (), facts(tokens=101)) == "tools"
    assert choose(FLEET, (), facts(tokens=9000)) == "vision"
    with pytest.raises(BadRequest, match="no model can serve"):
        choose(FLEET, (), facts(tokens=200_000))


def test_rules_narrow_the_candidates_when_they_apply() -> None:
    premium = Rule(when=Condition(tiers=("premium",)), models=("vision",))
    assert choose(FLEET, (premium,), facts()) == "small"
    assert choose(FLEET, (premium,), facts(tier="premium")) == "vision"
    long = Rule(when=Condition(min_prompt_tokens=50), require=("function_calling",))
    assert choose(FLEET, (long,), facts(tokens=49)) == "small"
    assert choose(FLEET, (long,), facts(tokens=50)) == "tools"
    header = Rule(when=Condition(header={"X-Quality": "high"}), exclude=("small", "tools"))
    assert choose(FLEET, (header,), facts(headers={"x-quality": "high"})) == "vision"
    assert choose(FLEET, (header,), facts(headers={"x-quality": "low"})) == "small"


def test_prices_count_the_prompt_and_the_completion() -> None:
    per_request = Candidate("flat", frozenset(), None, ((0.01, 0.0, 0.0),))
    per_token = Candidate("tokens", frozenset(), None, ((0.0, 0.1, 0.1),))
    assert choose((per_request, per_token), (), facts(tokens=10)) == "tokens"  # 0.0026
    assert choose((per_request, per_token), (), facts(tokens=1000)) == "flat"


def test_facts_use_max_tokens_or_the_expectation() -> None:
    assert facts_of({"max_tokens": 5}, 256).completion_tokens == 5
    assert facts_of({}, 256).completion_tokens == 256


@given(
    prices=st.lists(st.floats(0, 10), min_size=1, max_size=6),
    caps=st.lists(st.sets(st.sampled_from(["tools", "vision"])), min_size=6, max_size=6),
    needs=st.sets(st.sampled_from(["tools", "vision"])),
)
def test_the_choice_is_admitted_and_no_admitted_model_is_cheaper(
    prices: list[float], caps: list[set[str]], needs: set[str]
) -> None:
    fleet = [candidate(f"m{i}", p, tuple(caps[i])) for i, p in enumerate(prices)]
    f = facts(needs=tuple(needs))
    names = admitted(fleet, (), f)
    if not names:
        with pytest.raises(BadRequest):
            choose(fleet, (), f)
        return
    chosen = choose(fleet, (), f)
    assert chosen in names
    cost = {c.name: c.cost(f) for c in fleet}
    assert all(cost[chosen] <= cost[n] for n in names)
    assert needs <= next(c for c in fleet if c.name == chosen).capabilities
