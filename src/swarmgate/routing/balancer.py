"""Balancers: pure choices among a pool's usable candidates.

A balancer sees only how many candidates there are (and, for smarter ones later, a snapshot of
their stats) and returns an index; it never does I/O. Round-robin is the first; weighted,
least-outstanding, power-of-two and prefix-aware balancers plug into the same seam.
"""

from __future__ import annotations

from typing import Protocol


class Balancer(Protocol):
    def choose(self, n: int) -> int:
        """Index of the chosen candidate among ``n`` (n >= 1)."""
        ...


class RoundRobin:
    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = 0

    def choose(self, n: int) -> int:
        i = self._next % n
        self._next = i + 1
        return i
