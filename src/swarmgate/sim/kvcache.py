"""One model's KV cache in blocks, with vLLM's automatic prefix caching on top.

A running request holds the blocks of its prompt and of the tokens it may generate. The full
blocks of a prompt are cached under a hash chained over every block before them (block *i*'s
key stands for the whole prefix up to it), so a later prompt that starts the same way finds its
leading blocks already computed and prefills only the rest. A cached block that no running
request holds stays in the cache until its room is needed: blocks held by running requests are
never evicted, and the least recently used free ones go first. Held plus cached blocks never
exceed ``capacity_blocks``, except while running requests alone hold more (the usage gauge then
reads 1).
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Blocks:
    """What one request holds until it ends: its prompt's cached blocks, by key, and a count
    of blocks no other request can share (a partial last prompt block, the generated tokens)."""

    keys: tuple[int, ...]
    private: int
    cached_tokens: int  # leading prompt tokens found in the cache when the blocks were taken


def block_keys(tokens: list[str], block_tokens: int) -> list[int]:
    """The chained keys of the full blocks of ``tokens``. Python's str hash is salted per
    process, which is fine: the cache lives in-process."""
    keys = []
    key = 0
    for start in range(0, len(tokens) - block_tokens + 1, block_tokens):
        key = hash((key, *tokens[start : start + block_tokens]))
        keys.append(key)
    return keys


class KVCache:
    """The blocks of one model: held by running requests, or cached for later prompts."""

    def __init__(self, capacity_blocks: int, block_tokens: int, *, prefix_caching: bool) -> None:
        self.capacity = capacity_blocks
        self.block_tokens = block_tokens
        self.prefix_caching = prefix_caching
        self._holders: dict[int, int] = {}  # cached block -> running requests holding it
        # Cached blocks no running request holds, least recently freed first: eviction order.
        self._free: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._private = 0

    @property
    def held(self) -> int:
        """Blocks that running requests hold (a shared prompt block counts once)."""
        return len(self._holders) + self._private

    @property
    def cached(self) -> int:
        """Prompt blocks in the cache, held or free."""
        return len(self._holders) + len(self._free)

    @property
    def evictable(self) -> int:
        """Cached blocks no running request holds: the room a new request may take."""
        return len(self._free)

    @property
    def usage(self) -> float:
        """vLLM's ``kv_cache_usage_perc``: held blocks over capacity. Free cached blocks count
        as free, as in vLLM, since any new request may take their room."""
        return min(1.0, self.held / self.capacity)

    def blocks_for(self, tokens: int) -> int:
        return math.ceil(tokens / self.block_tokens)

    def fits(self, prompt: list[str], kv_tokens: int) -> bool:
        """Whether ``take`` would find room without holding more than the capacity: prompt
        blocks other running requests already hold cost nothing, free cached ones and new
        ones a block each."""
        keys = block_keys(prompt, self.block_tokens) if self.prefix_caching else []
        shared = sum(1 for key in keys if key in self._holders)
        needed = self.blocks_for(max(kv_tokens, len(prompt))) - shared
        return self.held + needed <= self.capacity

    def take(self, prompt: list[str], kv_tokens: int) -> Blocks:
        """Hold the blocks for ``kv_tokens`` (at least the prompt) and say how many leading
        prompt tokens were cached. The hit run ends at the first block not in the cache."""
        keys = block_keys(prompt, self.block_tokens) if self.prefix_caching else []
        hits = 0
        hitting = True
        for key in keys:
            if hitting and (key in self._holders or key in self._free):
                hits += 1
            else:
                hitting = False
            self._free.pop(key, None)
            self._holders[key] = self._holders.get(key, 0) + 1
        private = max(0, self.blocks_for(max(kv_tokens, len(prompt))) - len(keys))
        self._private += private
        self._evict()
        return Blocks(tuple(keys), private, hits * self.block_tokens)

    def give_back(self, blocks: Blocks) -> None:
        """Release a finished request's blocks; its prompt's blocks stay cached while room
        lasts. They are freed last block first, so the tail of a prompt is evicted before
        the prefix it shares with others (vLLM frees in the same order)."""
        self._private -= blocks.private
        for key in reversed(blocks.keys):
            left = self._holders[key] - 1
            if left:
                self._holders[key] = left
            else:
                del self._holders[key]
                self._free[key] = None
        # Only needed after running requests held more than the capacity between them.
        self._evict()

    def _evict(self) -> None:
        while self._free and self.held + len(self._free) > self.capacity:
            self._free.popitem(last=False)
