"""Keys' last use, recorded off the hot path.

The authenticator notes each key's latest use in a dict (one assignment per request, so a
thousand requests of one key cost one row). Every few seconds ``LastUsed.flush`` moves those
times onto a ``store.writebehind.WriteBehind`` and flushes it into ``KeyStore.touch``: while the
store is down they wait in a spool beside the audit spool (``<audit.spool_path>.last-used``)
and are replayed once it is back. Storing a time twice is harmless (``touch`` never moves a
time backwards), which is what at-least-once delivery needs.
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import orjson

from swarmgate.config import Audit
from swarmgate.store.keys import KeyStore
from swarmgate.store.writebehind import Codec, WriteBehind


@dataclass(frozen=True, slots=True)
class KeyUse:
    key_id: str
    ts: float


def _encode(use: KeyUse) -> bytes:
    return orjson.dumps({"key_id": use.key_id, "ts": use.ts})


def _decode(line: bytes) -> KeyUse:
    raw = orjson.loads(line)
    if not isinstance(raw["key_id"], str):
        raise ValueError("not a key use")
    return KeyUse(raw["key_id"], float(raw["ts"]))


CODEC: Final = Codec(_encode, _decode)


def spool_path(audit: Audit) -> Path:
    path = Path(audit.spool_path)
    return path.with_name(path.name + ".last-used")


class LastUsed:
    """Moves the authenticator's last-use times to the store, through a write-behind queue."""

    def __init__(self, seen: MutableMapping[str, float], keys: KeyStore, audit: Audit) -> None:
        self._seen = seen
        self._keys = keys
        self._writer = WriteBehind(
            self._store,
            CODEC,
            spool_path(audit),
            what="key last-use",
            flush_interval=audit.flush_interval,  # unused: flushed by the caller's loop
            queue_size=audit.queue_size,
        )

    @property
    def pending(self) -> int:
        return self._writer.pending

    async def _store(self, uses: Sequence[KeyUse]) -> None:
        latest: dict[str, float] = {}
        for use in uses:
            latest[use.key_id] = max(use.ts, latest.get(use.key_id, use.ts))
        await self._keys.touch(latest)

    def _collect(self) -> None:
        # Synchronous: no request can note a use between reading the dict and clearing it.
        for key_id, ts in self._seen.items():
            self._writer.put(KeyUse(key_id, ts))
        self._seen.clear()

    async def flush(self) -> None:
        """Store the times noted since the last flush (or spool them if the store is down)."""
        self._collect()
        await self._writer.flush()

    async def stop(self) -> None:
        self._collect()
        await self._writer.stop()
