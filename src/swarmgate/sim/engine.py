"""One simulated model's state: generation slots with a FIFO queue, its KV cache, counters.

Everything here is synchronous bookkeeping except ``ModelEngine.slot``, which waits for a free
slot; the HTTP layer (``server``) does the sleeping and the writing. The numbers kept here are
what ``/metrics`` exposes, under vLLM's names.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from swarmgate.errors import BadRequest, ServiceUnavailable
from swarmgate.sim.kvcache import Blocks, KVCache
from swarmgate.sim.profile import ModelProfile
from swarmgate.types import Clock


@dataclass(slots=True)
class ModelCounters:
    prompt_tokens: int = 0
    generation_tokens: int = 0
    prefix_cache_queries: int = 0  # tokens looked up, as vLLM counts them
    prefix_cache_hits: int = 0  # tokens found
    requests_finished: int = 0


@dataclass(frozen=True, slots=True)
class Prefill:
    """A request that got its slot: how long its prefill takes, and what it holds meanwhile."""

    seconds: float
    prompt_tokens: int
    blocks: Blocks

    @property
    def cached_tokens(self) -> int:
        return self.blocks.cached_tokens


def ttft_seconds(profile: ModelProfile, cached_tokens: int, prompt_tokens: int, u: float) -> float:
    """Prefill time once a slot is held (``u`` is drawn uniformly from [0, 1)).

    With ``prefill_tokens_per_second``: ``ttft_ms + u * jitter_ms`` of fixed overhead plus the
    uncached prompt tokens at that rate. Without it: ``ttft_ms``, shortened in proportion to
    the cached share of the prompt down to ``hit_ttft_ms``, plus ``u * jitter_ms``.
    """
    rate = profile.prefill_tokens_per_second
    if rate is not None:
        uncached = max(0, prompt_tokens - cached_tokens)
        return (profile.ttft_ms + u * profile.jitter_ms) / 1000.0 + uncached / rate
    base = profile.ttft_ms
    hit_ttft = min(profile.prefix_cache.hit_ttft_ms, base)
    if cached_tokens > 0 and prompt_tokens > 0:
        base -= (base - hit_ttft) * min(1.0, cached_tokens / prompt_tokens)
    return (base + u * profile.jitter_ms) / 1000.0


@dataclass(slots=True)
class _Ticket:
    """A request queued for a slot, with what it will take once the slot is handed over."""

    prompt: list[str]
    kv_tokens: int
    granted: asyncio.Future[Prefill]


class ModelEngine:
    """Slots, queue, KV cache and counters of one model on one server."""

    def __init__(
        self,
        name: str,
        profile: ModelProfile,
        rng: random.Random,
        clock: Clock = time.monotonic,  # the event loop's clock, for the shared prefill
    ) -> None:
        self.name = name
        self.profile = profile
        self.counters = ModelCounters()
        cache = profile.prefix_cache
        self.kv = KVCache(cache.capacity_blocks, cache.block_tokens, prefix_caching=cache.enabled)
        self.running = 0
        self._waiting: collections.deque[_Ticket] = collections.deque()
        self._wait_for_blocks = cache.wait_for_blocks
        self._rng = rng
        self._clock = clock
        self._prefill_free_at = 0.0  # with shared_prefill: when the last prefill admitted ends

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def blocks_in_use(self) -> int:
        return self.kv.held

    @property
    def kv_cache_usage(self) -> float:
        return self.kv.usage

    @contextlib.asynccontextmanager
    async def slot(self, prompt: list[str], kv_tokens: int = 0) -> AsyncIterator[Prefill]:
        """Hold one generation slot (FIFO) and the KV blocks of ``prompt`` and of
        ``kv_tokens`` in all (prompt and output), meanwhile; the prefix cache is looked up
        when the slot is granted, as vLLM's scheduler does. With ``wait_for_blocks`` the
        request also waits for room for its blocks. Raises ``ServiceUnavailable`` at once if
        the queue is full, ``BadRequest`` if the blocks could never fit.
        """
        if self._wait_for_blocks:
            needed = self.kv.blocks_for(max(kv_tokens, len(prompt)))
            if needed > self.kv.capacity:
                raise BadRequest(
                    f"the request needs {needed} KV-cache blocks of {self.kv.block_tokens} "
                    f"tokens; the model has {self.kv.capacity}",
                    param="max_tokens",
                )
        prefill = await self._acquire(prompt, kv_tokens)
        try:
            yield prefill
        finally:
            self.kv.give_back(prefill.blocks)
            self.running -= 1
            self._schedule()

    def _admissible(self, prompt: list[str], kv_tokens: int) -> bool:
        if self.running >= self.profile.slots:
            return False
        return not self._wait_for_blocks or self.kv.fits(prompt, kv_tokens)

    async def _acquire(self, prompt: list[str], kv_tokens: int) -> Prefill:
        if not self._waiting and self._admissible(prompt, kv_tokens):
            self.running += 1
            return self._grant(prompt, kv_tokens)
        if len(self._waiting) >= self.profile.max_queue:
            raise ServiceUnavailable(
                f"model {self.name!r} is overloaded: {len(self._waiting)} requests waiting",
                headers={"Retry-After": "1"},
            )
        ticket = _Ticket(prompt, kv_tokens, asyncio.get_running_loop().create_future())
        self._waiting.append(ticket)
        try:
            return await ticket.granted
        except BaseException:
            # Cancelled while queued: leave the queue; if the slot was handed to us in the
            # same tick the cancellation arrived, pass it on instead of leaking it.
            granted = ticket.granted
            if granted.done() and not granted.cancelled():
                self.kv.give_back(granted.result().blocks)
                self.running -= 1
            else:
                with contextlib.suppress(ValueError):  # already skipped by _schedule
                    self._waiting.remove(ticket)
            # Either way the head of the queue may now be admissible.
            self._schedule()
            raise

    def _schedule(self) -> None:
        """Admit waiters from the head of the queue while there is a slot (and room).

        Called in the same step as every release, so that no newcomer can overtake the queue
        before the waiter wakes up, and the waiter's blocks are taken at once: a scrape never
        sees a running request holding no cache. The head that does not fit blocks those
        behind it (first come, first served, as vLLM's scheduler).
        """
        while self._waiting:
            ticket = self._waiting[0]
            if ticket.granted.done():  # cancelled, not yet removed by its task
                self._waiting.popleft()
                continue
            if not self._admissible(ticket.prompt, ticket.kv_tokens):
                return
            self._waiting.popleft()
            self.running += 1
            ticket.granted.set_result(self._grant(ticket.prompt, ticket.kv_tokens))

    def _grant(self, prompt: list[str], kv_tokens: int) -> Prefill:
        """Take the blocks of a request entering a slot and count its prompt."""
        blocks = self.kv.take(prompt, kv_tokens)
        prompt_tokens = len(prompt)
        self.counters.prompt_tokens += prompt_tokens
        if self.kv.prefix_caching:
            self.counters.prefix_cache_queries += prompt_tokens
            self.counters.prefix_cache_hits += blocks.cached_tokens
        seconds = ttft_seconds(
            self.profile, blocks.cached_tokens, prompt_tokens, self._rng.random()
        )
        rate = self.profile.prefill_tokens_per_second
        if self.profile.shared_prefill and rate is not None:
            # One prefill at a time, in admission order: vLLM's scheduler spends its token
            # budget on the oldest prefill first, so a prompt waits for those before it.
            now = self._clock()
            start = max(now, self._prefill_free_at)
            self._prefill_free_at = start + (prompt_tokens - blocks.cached_tokens) / rate
            seconds += start - now
        return Prefill(seconds, prompt_tokens, blocks)
