"""The usage ledger: one record per authenticated inference request, written behind the hot path.

``Accounting.finish`` builds a ``store.usage.UsageRecord`` (a named tuple) for every request
that got past authentication, however it ended: answered, refused (4xx, 429 included), failed
(5xx), a stream cut short, the client gone. ``Ledger.put`` appends it to a bounded in-memory
queue and returns; it never awaits and never encodes. Unauthenticated requests (a 401, a blocked
address) are not usage: the audit log records those.

The queue is a ``store.writebehind.WriteBehind``, the one mechanism the audit log uses too: it
stores batches through ``UsageStore.insert_many`` every ``ledger.flush_interval`` seconds (or
as soon as ``ledger.batch_size`` records wait), and while the database is down it appends them
to ``ledger.spool_path`` (JSON lines, encoded there and only there) and replays them, oldest
first, when it is back. Delivery is at-least-once and the store skips a record it already
holds, so the ledger ends with exactly one row per request.

What can be lost: on a clean stop nothing (``stop`` flushes, or spools, the queue); on a
``kill -9`` the records still in memory, at most those of the last flush interval (1 s by
default) plus a batch being stored at that instant if its commit had not happened.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, Protocol

import orjson

from swarmgate.config import Ledger as LedgerConfig
from swarmgate.store.usage import UsageRecord
from swarmgate.store.writebehind import Codec, WriteBehind

_TEXT: Final = ("request_id", "owner", "tier", "route")
_OPTIONAL_TEXT: Final = ("key_id", "model", "deployment")


class UsageSink(Protocol):
    """Where batches go: ``store.usage.UsageStore`` (raises ``StoreError`` when down)."""

    async def insert_many(self, records: Sequence[UsageRecord]) -> None: ...


def _encode(record: UsageRecord) -> bytes:
    return orjson.dumps(record._asdict())


def _decode(line: bytes) -> UsageRecord:
    """Raise ValueError/TypeError/KeyError on a line that is not a record (e.g. torn)."""
    raw: dict[str, Any] = orjson.loads(line)
    if not all(isinstance(raw[name], str) for name in _TEXT):
        raise ValueError("not a usage record")
    if not all(raw[name] is None or isinstance(raw[name], str) for name in _OPTIONAL_TEXT):
        raise ValueError("not a usage record")
    ttft = raw["ttft"]
    return UsageRecord(
        request_id=raw["request_id"],
        ts=float(raw["ts"]),
        key_id=raw["key_id"],
        owner=raw["owner"],
        tier=raw["tier"],
        model=raw["model"],
        deployment=raw["deployment"],
        route=raw["route"],
        tokens_in=int(raw["tokens_in"]),
        tokens_out=int(raw["tokens_out"]),
        cost=float(raw["cost"]),
        latency=float(raw["latency"]),
        ttft=None if ttft is None else float(ttft),
        status=int(raw["status"]),
        streamed=bool(raw["streamed"]),
        cut=bool(raw["cut"]),
    )


CODEC: Final = Codec(_encode, _decode)


class Ledger(WriteBehind[UsageRecord]):
    """The usage ledger's write-behind queue: ``put`` a record, it reaches the store."""

    def __init__(
        self, store: UsageSink, config: LedgerConfig, *, insert_timeout: float = 30.0
    ) -> None:
        super().__init__(
            store.insert_many,
            CODEC,
            Path(config.spool_path or "swarmgate-audit.spool.ledger"),
            what="ledger",
            flush_interval=config.flush_interval,
            queue_size=config.queue_size,
            batch_size=config.batch_size,
            insert_timeout=insert_timeout,
        )
