"""Weighted splits and canaries: sticky per key, and following their weights."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from swarmgate.routing.splits import pick, point

AB = (("a", 70.0), ("b", 30.0))


@given(st.text(), st.text())
def test_a_key_always_gets_the_same_variant(split: str, key: str) -> None:
    assert 0 <= point(split, key) < 100
    assert pick(split, key, AB) == pick(split, key, AB)


def test_the_shares_follow_the_weights() -> None:
    got = Counter(pick("chat", f"key-{i}", AB) for i in range(10_000))
    assert 6800 < got["a"] < 7200, got


def test_a_variant_of_weight_zero_gets_nothing() -> None:
    variants = (("a", 100.0), ("b", 0.0))
    assert {pick("s", str(i), variants) for i in range(2000)} == {"a"}
    assert {pick("s", str(i), (("a", 0.0), ("b", 100.0))) for i in range(2000)} == {"b"}


def test_splits_are_independent_of_each_other() -> None:
    same = sum(pick("one", str(i), AB) == pick("two", str(i), AB) for i in range(5000))
    # Independent 70/30 picks agree 0.7² + 0.3² = 58% of the time, not always.
    assert 2700 < same < 3100


@given(st.text(), st.floats(0, 100), st.floats(0, 100))
def test_raising_a_canary_only_moves_users_to_it(key: str, low: float, high: float) -> None:
    low, high = min(low, high), max(low, high)
    before = pick("c", key, (("stable", 100 - low), ("canary", low)))
    after = pick("c", key, (("stable", 100 - high), ("canary", high)))
    assert not (before == "canary" and after == "stable")
