"""GCRA, the generic cell rate algorithm: a token bucket kept as one number.

The state is the theoretical arrival time (``tat``) of the next request at the steady rate.
A request costs ``interval`` (1 / rate) seconds of it; it is allowed while ``tat`` stays
within ``burst`` intervals of now, so at most ``burst`` requests pass at once and then one per
``interval``. Pure arithmetic, imported by both counter stores (and mirrored in the Redis
script), so it imports nothing of ours.
"""

from __future__ import annotations

import math


def gcra(tat: float, now: float, interval: float, burst: int) -> tuple[float, float]:
    """``(new_tat, 0.0)`` when a request is allowed at ``now``, else ``(tat, wait)``: the state
    unchanged and the seconds until it would be allowed."""
    new_tat = max(tat, now) + interval
    allowed_at = new_tat - burst * interval
    if allowed_at > now:
        return tat, allowed_at - now
    return new_tat, 0.0


def remaining(tat: float, now: float, interval: float, burst: int) -> int:
    """Requests that would be allowed at once now."""
    return max(0, math.floor((now + burst * interval - max(tat, now)) / interval + 1e-9))


def reset(tat: float, now: float) -> float:
    """Seconds until the bucket is full again."""
    return max(0.0, tat - now)
