"""A consistent-hash ring: where a key lands among a pool's deployments, and who comes next.

Each deployment owns points on a 64-bit ring in proportion to its weight; a key belongs to the
first point clockwise from its own hash, and ``successors`` walks on from there, naming each
deployment once. The points depend only on each deployment's name and weight, never on who
else is in the pool, so adding or removing one deployment moves only the keys it gains or
loses, and every gateway replica and worker builds the same ring. The hash is BLAKE2b, not
Python's ``hash()``, which is salted per process.
"""

from __future__ import annotations

from bisect import bisect
from collections.abc import Iterable, Iterator
from hashlib import blake2b

# Points of a deployment of weight 1: enough that four deployments own shares within a few
# percent of equal. A weight scales them, within bounds that keep the ring small.
POINTS_PER_WEIGHT = 160
MAX_POINTS = 16 * POINTS_PER_WEIGHT


def key_hash(key: str) -> int:
    """A key's place on the ring: the same in every process."""
    return int.from_bytes(blake2b(key.encode(), digest_size=8).digest(), "big")


class HashRing:
    __slots__ = ("_hashes", "_names", "members")

    def __init__(self, members: Iterable[tuple[str, float]]) -> None:
        self.members = dict(members)  # name → weight
        points = sorted(
            (key_hash(f"{name}#{i}"), name)
            for name, weight in self.members.items()
            for i in range(min(MAX_POINTS, max(1, round(POINTS_PER_WEIGHT * weight))))
        )
        self._hashes = [h for h, _ in points]
        self._names = [name for _, name in points]

    def successors(self, key: str) -> Iterator[str]:
        """Every member once, in ring order from where ``key`` lands: its owner first."""
        names = self._names
        size = len(names)
        start = bisect(self._hashes, key_hash(key))
        seen: set[str] = set()
        for step in range(size):
            name = names[(start + step) % size]
            if name not in seen:
                seen.add(name)
                yield name
                if len(seen) == len(self.members):
                    return
