"""Fallback chains: the next model after an exhausted one, and the one a long prompt fits."""

from __future__ import annotations

from swarmgate.routing.fallbacks import FallbackChains
from swarmgate.routing.policy import fallback_cycle

CHAINS = FallbackChains({"a": ["b", "c"], "b": ["d"], "c": [], "d": []})


def test_the_chain_is_followed_depth_first_without_repeats() -> None:
    assert list(CHAINS.order("a")) == ["b", "d", "c"]
    assert list(CHAINS.order("c")) == []
    assert list(FallbackChains({"a": ["b"], "b": ["a"]}).order("a")) == ["b"]


def test_next_model_skips_the_tried_and_the_forbidden() -> None:
    assert CHAINS.next_model("a", ["a"]) == "b"
    assert CHAINS.next_model("b", ["a", "b"]) == "d"
    assert CHAINS.next_model("d", ["a", "b", "d"]) is None  # d has no chain of its own
    assert CHAINS.next_model("a", ["a"], lambda m: m != "b") == "d"
    assert CHAINS.next_model("c", ["c"]) is None


def test_a_prompt_goes_to_the_first_model_whose_window_it_fits() -> None:
    windows = {"a": 10, "b": 20, "c": None, "d": 100}
    assert CHAINS.fitting("a", 10, windows) == "a"
    assert CHAINS.fitting("a", 11, windows) == "b"
    assert CHAINS.fitting("a", 50, windows) == "d"
    assert CHAINS.fitting("b", 500, windows) is None


def test_cycles_are_found() -> None:
    assert fallback_cycle({"a": ["b"], "b": ["c"], "c": []}) is None
    assert fallback_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert fallback_cycle({"x": ["y"], "y": ["z"], "z": ["y"]}) == ["y", "z", "y"]
