"""``Results``: the native face's recent answers, kept so ``GET /api/v1/inference/{task_id}``
can return them again.

In memory and per process (a replica answers only for the tasks it served), bounded in
entries, in bytes and in time: the oldest answers are dropped first when either bound is
reached, and an answer older than ``ttl`` is gone. Durable task results are the tasks plane's
job (``/v1/tasks``), not this cache's. Nothing here awaits.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from swarmgate.types import Clock


@dataclass(frozen=True, slots=True)
class StoredResult:
    owner: str  # the principal's subject: only it (or an admin) may read the result again
    scope: str  # the scope its route needs, needed again to read it
    body: bytes  # the InferenceResponse, as JSON
    stored_at: float


class Results:
    def __init__(
        self, ttl: float, max_entries: int, max_bytes: int, clock: Clock = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._clock = clock
        self._entries: OrderedDict[str, StoredResult] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size(self) -> int:
        """The bytes of the answers kept."""
        return self._bytes

    def put(self, task_id: str, owner: str, scope: str, body: bytes) -> None:
        """Keep ``body``; an answer larger than the whole bound is not kept at all."""
        if len(body) > self.max_bytes:
            return
        self._drop(task_id)
        self._entries[task_id] = StoredResult(owner, scope, body, self._clock())
        self._bytes += len(body)
        self._expire()
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def get(self, task_id: str) -> StoredResult | None:
        self._expire()
        return self._entries.get(task_id)

    def _expire(self) -> None:
        # Insertion order is age order: stop at the first entry still fresh.
        horizon = self._clock() - self.ttl
        while self._entries:
            oldest = next(iter(self._entries.values()))
            if oldest.stored_at > horizon:
                return
            self._drop(next(iter(self._entries)))

    def _drop(self, task_id: str) -> None:
        old = self._entries.pop(task_id, None)
        if old is not None:
            self._bytes -= len(old.body)

    def describe(self) -> dict[str, Any]:
        return {"entries": len(self._entries), "bytes": self._bytes, "ttl": self.ttl}
