"""``PrefixAware``: requests that share a prompt prefix go where that prefix was last served,
so that the server's prefix cache (vLLM's automatic prefix caching, SGLang's radix cache,
llama.cpp's slot cache) skips its prefill.

A prompt's text (its messages', UTF-8) is cut into blocks of ``block_bytes``; block *i*'s
hash is chained over blocks 0..i, so equal hashes mean equal prefixes, and the hashes are
stable across processes (checksums, not ``hash()``) so that replicas can share them
(``routing/hints.py``). They are computed in the request path only for a pool whose balancer
is this one (``PrefixAware.facts``), and carried to it in ``PromptFacts``.

``PrefixIndex`` maps block hashes to the deployments that recently served them: approximate
(a deployment evicts from its cache without telling) and bounded (least recently served
blocks go first). A placement is recorded in ``finished``, once per request answered whole,
never when a deployment is chosen, so that an attempt that failed, was refused or was retried
elsewhere advertises no holder that has nothing cached.

The choice: the candidate holding the longest prefix of the prompt, unless its in-flight
count (for its weight) exceeds ``load_factor`` times the least loaded candidate's plus
``slack``; then, as for a prompt nobody holds, the ``fallback`` balancer decides
(resource-aware by default).
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from swarmgate.routing.balancers import Balancer, DeploymentView, RoutingFacts, SessionKey
from swarmgate.types import Outcome

BLOCK_BYTES = 1024  # ~256 tokens of English; smaller blocks cost more hashing per request
MAX_BLOCKS = 64  # prompts are hashed up to their first 64 KB
HOLDERS = 4  # deployments remembered per block, most recent first


class PromptFacts(RoutingFacts):
    """A request's routing facts with its prompt's block hashes (``blocks``).

    A subclass, so that the named tuple every other balancer receives stays as it is; it has
    an instance dict for the one extra attribute, paid only where this balancer is chosen."""

    blocks: tuple[int, ...]

    @classmethod
    def of(cls, model: str, stream: bool, blocks: tuple[int, ...]) -> PromptFacts:
        facts = cls(model, stream)
        facts.blocks = blocks
        return facts


def blocks_of(parts: Iterable[str], block_bytes: int = BLOCK_BYTES) -> tuple[int, ...]:
    """The prefix hashes of the full blocks of the text ``parts`` make laid end to end.

    CRC-32 and Adler-32 both continue over concatenated input, so each block's pair is the
    checksum of the whole prefix up to its end, at the cost of the block alone; the two make
    a 64-bit key. Not collision-proof, and need not be: a false match costs a cache miss.
    (BLAKE2b per block cost 3-4 µs here, eight times as much.)"""
    data = "".join(parts).encode()
    full = min(len(data) // block_bytes, MAX_BLOCKS)
    out = []
    crc = adler = 1
    for start in range(0, full * block_bytes, block_bytes):
        chunk = data[start : start + block_bytes]
        crc = zlib.crc32(chunk, crc)
        adler = zlib.adler32(chunk, adler)
        out.append(crc << 32 | adler)
    return tuple(out)


def prompt_text(payload: Mapping[str, Any]) -> list[str]:
    """The text a prompt's cache is keyed on, in order: each chat message's role and text
    (image and audio parts left out), or a completion's prompt."""
    messages = payload.get("messages")
    if isinstance(messages, list):
        parts = []
        for message in messages:
            if not isinstance(message, dict):
                continue
            parts.append(f"\x1e{message.get('role')}\x1f")
            content = message.get("content")
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts.extend(
                    p["text"]
                    for p in content
                    if isinstance(p, dict) and isinstance(p.get("text"), str)
                )
        return parts
    prompt = payload.get("prompt")
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        return [prompt[0]]  # a batch: its first prompt decides
    return []


class PrefixIndex:
    """Block hash → the deployments that served it lately; at most ``capacity`` blocks."""

    __slots__ = ("_blocks", "capacity")

    def __init__(self, capacity: int = 100_000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._blocks: OrderedDict[int, list[str]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def record(self, blocks: Sequence[int], name: str) -> None:
        """``name`` has just served a prompt of these blocks."""
        index = self._blocks
        for block in blocks:
            holders = index.get(block)
            if holders is None:
                index[block] = [name]
            else:
                if holders[0] != name:
                    if name in holders:
                        holders.remove(name)
                    holders.insert(0, name)
                    del holders[HOLDERS:]
                index.move_to_end(block)
        while len(index) > self.capacity:
            index.popitem(last=False)

    def matches(self, blocks: Sequence[int]) -> dict[str, int]:
        """How many leading blocks of the prompt each holder served (a read: no refresh)."""
        index = self._blocks
        depth: dict[str, int] = {}
        for i, block in enumerate(blocks, 1):
            holders = index.get(block)
            if not holders:
                break
            for name in holders:
                depth[name] = i
        return depth


def _load(view: DeploymentView) -> float:
    return view.in_flight / view.weight


class PrefixAware:
    __slots__ = ("block_bytes", "fallback", "index", "load_factor", "on_served", "slack")
    # Keys on no session: the request path never looks one up for it.
    session: SessionKey | None = None

    def __init__(
        self,
        fallback: Balancer,
        *,
        index: PrefixIndex | None = None,
        block_bytes: int = BLOCK_BYTES,
        load_factor: float = 1.5,
        slack: float = 4.0,
        on_served: Callable[[str, str, tuple[int, ...]], None] | None = None,
    ) -> None:
        if block_bytes < 1 or load_factor < 1 or slack < 0:
            raise ValueError("block_bytes >= 1, load_factor >= 1 and slack >= 0, please")
        self.fallback = fallback
        self.index = index if index is not None else PrefixIndex()  # an empty one is falsy
        self.block_bytes = block_bytes
        self.load_factor = load_factor
        self.slack = slack
        # (model, deployment, blocks) of each placement: to the other replicas (routing/hints.py)
        self.on_served = on_served

    def facts(self, model: str, stream: bool, payload: Mapping[str, Any]) -> PromptFacts:
        return PromptFacts.of(model, stream, blocks_of(prompt_text(payload), self.block_bytes))

    def choose(self, views: Sequence[DeploymentView], request: RoutingFacts) -> int:
        blocks: tuple[int, ...] = getattr(request, "blocks", ())
        if blocks and len(views) > 1:
            depth = self.index.matches(blocks)
            if depth:
                best = -1
                best_depth = 0
                for i, view in enumerate(views):
                    d = depth.get(view.name, 0)
                    if d > best_depth or (
                        d == best_depth and d and _load(view) < _load(views[best])
                    ):
                        best, best_depth = i, d
                if best >= 0:
                    least = min(_load(v) for v in views)
                    if _load(views[best]) <= self.load_factor * least + self.slack:
                        return best
        return self.fallback.choose(views, request)

    def finished(
        self, name: str, facts: RoutingFacts, outcome: Outcome | None, seconds: float
    ) -> None:
        if outcome is Outcome.OK:
            blocks: tuple[int, ...] = getattr(facts, "blocks", ())
            if blocks:
                self.index.record(blocks, name)
                if self.on_served is not None:
                    self.on_served(facts.model, name, blocks)
        finished = getattr(self.fallback, "finished", None)
        if finished is not None:
            finished(name, facts, outcome, seconds)
