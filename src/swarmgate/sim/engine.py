"""One simulated model's state: generation slots with a FIFO queue, a prefix cache, counters.

Everything here is synchronous bookkeeping except ``ModelEngine.slot``, which waits for a free
slot; the HTTP layer (``server``) does the sleeping and the writing. The numbers kept here are
what ``/metrics`` exposes, under vLLM's names.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass

from swarmgate.errors import ServiceUnavailable
from swarmgate.sim.profile import ModelProfile, PrefixCacheProfile


class PrefixCache:
    """vLLM's automatic prefix caching, reduced to its bookkeeping.

    The prompt is cut into full blocks of ``block_tokens`` tokens; block *i* is keyed by a hash
    chained over blocks 0..i, so a key stands for the whole prefix up to it. Leading blocks that
    are present are hits; the first miss ends the hit run and every later block is inserted.
    Least recently used blocks are evicted beyond ``capacity_blocks``.
    """

    def __init__(self, profile: PrefixCacheProfile) -> None:
        self.block_tokens = profile.block_tokens
        self.capacity = profile.capacity_blocks
        # Python's str hash is salted per process, which is fine: the cache lives in-process.
        self._blocks: collections.OrderedDict[int, None] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def match_and_insert(self, tokens: list[str]) -> int:
        """Return how many leading tokens were cached, and cache the whole prompt."""
        size = self.block_tokens
        key = 0
        hits = 0
        hitting = True
        for start in range(0, len(tokens) - size + 1, size):
            key = hash((key, *tokens[start : start + size]))
            if hitting and key in self._blocks:
                self._blocks.move_to_end(key)
                hits += 1
                continue
            hitting = False
            self._blocks[key] = None
            self._blocks.move_to_end(key)
            if len(self._blocks) > self.capacity:
                self._blocks.popitem(last=False)
        return hits * size


@dataclass(slots=True)
class ModelCounters:
    prompt_tokens: int = 0
    generation_tokens: int = 0
    prefix_cache_queries: int = 0  # tokens looked up, as vLLM counts them
    prefix_cache_hits: int = 0  # tokens found
    requests_finished: int = 0


def ttft_seconds(profile: ModelProfile, cached_tokens: int, prompt_tokens: int, u: float) -> float:
    """Prefill time: ``ttft_ms``, shortened in proportion to the cached share of the prompt
    down to ``hit_ttft_ms``, plus ``u * jitter_ms`` (``u`` drawn uniformly from [0, 1))."""
    base = profile.ttft_ms
    hit_ttft = min(profile.prefix_cache.hit_ttft_ms, base)
    if cached_tokens > 0 and prompt_tokens > 0:
        base -= (base - hit_ttft) * min(1.0, cached_tokens / prompt_tokens)
    return (base + u * profile.jitter_ms) / 1000.0


class ModelEngine:
    """Slots, queue, prefix cache and counters of one model on one server."""

    def __init__(self, name: str, profile: ModelProfile, rng: random.Random) -> None:
        self.name = name
        self.profile = profile
        self.counters = ModelCounters()
        self.cache = PrefixCache(profile.prefix_cache) if profile.prefix_cache.enabled else None
        self.running = 0
        self.blocks_in_use = 0
        # Each waiter with the KV blocks it will hold: a handed-over slot takes its blocks in
        # the same step, so a scrape never sees a running request holding no cache.
        self._waiting: collections.deque[tuple[asyncio.Future[None], int]] = collections.deque()
        self._rng = rng

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def kv_cache_usage(self) -> float:
        return min(1.0, self.blocks_in_use / self.profile.prefix_cache.capacity_blocks)

    def blocks_for(self, tokens: int) -> int:
        return math.ceil(tokens / self.profile.prefix_cache.block_tokens)

    @contextlib.asynccontextmanager
    async def slot(self, kv_tokens: int) -> AsyncIterator[None]:
        """Hold one generation slot (FIFO); reserve KV blocks for ``kv_tokens`` meanwhile.

        Raises ``ServiceUnavailable`` at once if the queue is full.
        """
        blocks = self.blocks_for(kv_tokens)
        await self._acquire(blocks)
        try:
            yield
        finally:
            self.blocks_in_use -= blocks
            self._release()

    async def _acquire(self, blocks: int) -> None:
        if self.running < self.profile.slots and not self._waiting:
            self.running += 1
            self.blocks_in_use += blocks
            return
        if len(self._waiting) >= self.profile.max_queue:
            raise ServiceUnavailable(
                f"model {self.name!r} is overloaded: {len(self._waiting)} requests waiting",
                headers={"Retry-After": "1"},
            )
        waiter = asyncio.get_running_loop().create_future()
        entry = (waiter, blocks)
        self._waiting.append(entry)
        try:
            await waiter
        except BaseException:
            # Cancelled while queued: leave the queue; if the slot was handed to us in the
            # same tick the cancellation arrived, pass it on instead of leaking it.
            if waiter.done() and not waiter.cancelled():
                self.blocks_in_use -= blocks
                self._release()
            else:
                with contextlib.suppress(ValueError):  # already skipped by _release
                    self._waiting.remove(entry)
            raise

    def _release(self) -> None:
        # The slot passes straight to the next waiter, so ``running`` does not change and no
        # newcomer can overtake the queue between this release and the waiter's wake-up.
        while self._waiting:
            waiter, blocks = self._waiting.popleft()
            if not waiter.done():
                self.blocks_in_use += blocks
                waiter.set_result(None)
                return
        self.running -= 1

    def prefill(self, tokens: list[str]) -> float:
        """Account for a prompt entering the model; return its time to first token (s)."""
        prompt_tokens = len(tokens)
        self.counters.prompt_tokens += prompt_tokens
        cached = 0
        if self.cache is not None:
            cached = self.cache.match_and_insert(tokens)
            self.counters.prefix_cache_queries += prompt_tokens
            self.counters.prefix_cache_hits += cached
        return ttft_seconds(self.profile, cached, prompt_tokens, self._rng.random())
