"""Weighted splits (A/B tests) and canaries: which variant a request gets.

Deterministic for a sticky key (a session header's value, else the caller's key): the key and
the split's name are hashed to a point in [0, 100), and the variant is the one whose share of
the cumulative weights holds that point. One user sees one variant for as long as the weights
stay; changing a canary's percentage moves only the users between the old and the new edge.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

SCALE = 2**64


def point(split: str, key: str) -> float:
    """Where ``key`` falls in [0, 100) for ``split`` (independent across splits)."""
    digest = hashlib.blake2b(f"{split}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") * 100 / SCALE


def pick(split: str, key: str, variants: Sequence[tuple[str, float]]) -> str:
    """The variant for ``key``; ``variants`` are (model, percent) pairs summing to 100."""
    at = point(split, key)
    edge = 0.0
    for name, weight in variants:
        edge += weight
        if at < edge:
            return name
    # Rounding in the sum (99.999...): the last variant with any weight.
    return next(name for name, weight in reversed(variants) if weight > 0)
