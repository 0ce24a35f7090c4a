"""Balancers: pure choices among a pool's usable candidates.

``choose(views, request)`` sees a read-only view of each candidate (name, weight, in-flight
count and capacity) and the request's routing facts, and returns an index; it never does I/O,
so it can be tested without an event loop. Weighted round robin is the first; least
outstanding, power of two, consistent hashing and prefix-cache awareness plug into the seam.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol


class DeploymentView(Protocol):
    """What a balancer may read of a candidate deployment."""

    @property
    def name(self) -> str: ...

    @property
    def weight(self) -> float: ...

    @property
    def in_flight(self) -> int: ...

    @property
    def max_concurrent(self) -> int: ...


class RoutingFacts(NamedTuple):
    """What a balancer may read of the request (more facts come with smarter balancers). A
    named tuple: built for every request, where a frozen dataclass costs ~1 µs."""

    model: str
    stream: bool = False


class Balancer(Protocol):
    def choose(self, views: Sequence[DeploymentView], request: RoutingFacts) -> int:
        """Index of the chosen candidate among ``views`` (never empty)."""
        ...


class WeightedRoundRobin:
    """Smooth weighted round robin (nginx's): every candidate gains its weight, the richest is
    chosen and pays the total. Over any run the picks follow the weights, interleaved rather
    than in bursts; with equal weights it is plain round robin. Candidates that are busy or
    excluded for a request simply sit that turn out."""

    __slots__ = ("_current",)

    def __init__(self) -> None:
        self._current: dict[str, float] = {}

    def choose(self, views: Sequence[DeploymentView], request: RoutingFacts) -> int:
        if len(views) == 1:
            return 0
        current = self._current
        best = 0
        best_value = total = 0.0
        for i, view in enumerate(views):
            weight = view.weight
            value = current.get(view.name, 0.0) + weight
            current[view.name] = value
            total += weight
            if i == 0 or value > best_value:
                best, best_value = i, value
        current[views[best].name] = best_value - total
        return best
