"""A model's KV blocks: prefix hits over chained block hashes, held blocks, bounded LRU cache."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from swarmgate.sim.kvcache import KVCache


def tokens(n: int, salt: str = "t") -> list[str]:
    return [f"{salt}{i}" for i in range(n)]


def serve(kv: KVCache, prompt: list[str], kv_tokens: int = 0) -> int:
    """One request that runs and ends: how many of its prompt tokens were cached."""
    blocks = kv.take(prompt, kv_tokens)
    kv.give_back(blocks)
    return blocks.cached_tokens


def test_hits_are_the_leading_full_blocks_only() -> None:
    kv = KVCache(100, 4, prefix_caching=True)
    assert serve(kv, tokens(10)) == 0  # cold; two full blocks cached, the partial one is not
    assert kv.cached == 2
    assert serve(kv, tokens(10)) == 8
    # Same first block, different second: the hit run stops at the first miss.
    assert serve(kv, tokens(4) + tokens(8, "x")) == 4
    # A block equal in content but at another position is not a hit (chained hashes).
    assert serve(kv, tokens(4, "x") + tokens(4)) == 0


def test_evicts_the_least_recently_used_free_blocks() -> None:
    kv = KVCache(4, 2, prefix_caching=True)
    a, b = tokens(4, "a"), tokens(4, "b")
    serve(kv, a)
    serve(kv, b)
    assert serve(kv, a) == 4  # refreshes a: b is now the oldest
    serve(kv, tokens(4, "c"))
    assert kv.cached == 4
    assert serve(kv, a) == 4
    assert serve(kv, b) == 0


def test_blocks_held_by_running_requests_are_never_evicted() -> None:
    kv = KVCache(4, 2, prefix_caching=True)
    running = kv.take(tokens(4, "a"), 4)  # two cached blocks, held
    for salt in "bcdefg":
        serve(kv, tokens(4, salt))  # each needs two blocks: only free ones can make room
    assert kv.cached <= 4
    assert kv.take(tokens(4, "a"), 4).cached_tokens == 4
    kv.give_back(running)


def test_cached_blocks_live_in_the_room_running_requests_leave() -> None:
    kv = KVCache(10, 2, prefix_caching=True)
    serve(kv, tokens(12, "a"))  # six blocks cached, none held
    assert (kv.cached, kv.held, kv.usage) == (6, 0, 0.0)
    big = kv.take(tokens(2, "b"), 16)  # holds eight blocks: two of a's can stay
    assert (kv.held, kv.evictable, kv.usage) == (8, 2, 0.8)
    kv.give_back(big)
    # A prompt's blocks are freed tail first, so its head, the likeliest to be shared, stayed.
    assert serve(kv, tokens(12, "a")) == 2 * 2


def test_a_prefix_shared_by_running_requests_is_held_once() -> None:
    kv = KVCache(100, 4, prefix_caching=True)
    system = tokens(16, "sys")
    first = kv.take(system + tokens(4, "u1"), 24)  # 5 prompt blocks, 1 private
    second = kv.take(system + tokens(4, "u2"), 24)
    assert second.cached_tokens == 16
    assert kv.held == 4 + 2 * (1 + 1)
    kv.give_back(first)
    kv.give_back(second)
    assert (kv.held, kv.cached) == (0, 6)


def test_without_prefix_caching_nothing_is_cached_but_blocks_are_held() -> None:
    kv = KVCache(100, 4, prefix_caching=False)
    assert serve(kv, tokens(16)) == 0
    blocks = kv.take(tokens(16), 20)
    assert (blocks.cached_tokens, kv.held, kv.cached) == (0, 5, 0)
    kv.give_back(blocks)
    assert kv.held == 0


requests = st.lists(
    st.tuples(
        st.integers(0, 3),  # which shared prefix
        st.integers(0, 40),  # its length in tokens
        st.integers(0, 12),  # a private suffix's length
        st.integers(0, 30),  # tokens to generate
        st.booleans(),  # whether the oldest running request ends first
    ),
    max_size=40,
)


@given(st.integers(1, 24), st.integers(1, 5), requests)
def test_the_cache_never_outgrows_the_room_running_requests_leave(
    capacity: int, block_tokens: int, plan: list[tuple[int, int, int, int, bool]]
) -> None:
    kv = KVCache(capacity, block_tokens, prefix_caching=True)
    running = []
    for n, (prefix, length, suffix, output, end_one) in enumerate(plan):
        prompt = tokens(length, f"p{prefix}-") + tokens(suffix, f"r{n}-")
        fits = kv.fits(prompt, len(prompt) + output)
        blocks = kv.take(prompt, len(prompt) + output)
        assert fits == (kv.held <= capacity)  # fits says exactly whether taking stays within
        assert blocks.cached_tokens % block_tokens == 0
        assert 0 <= blocks.cached_tokens <= len(prompt)
        running.append(blocks)
        assert kv.evictable == 0 or kv.held + kv.evictable <= capacity
        if end_one:
            kv.give_back(running.pop(0))
            assert kv.held + kv.evictable <= capacity or kv.evictable == 0
    for blocks in running:
        kv.give_back(blocks)
    assert kv.held == 0
    assert kv.cached == kv.evictable <= capacity
