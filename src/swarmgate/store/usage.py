"""The usage ledger in the SQL store: idempotent batched inserts, reports, spend, retention.

Writers never call this on the hot path: ``limits.ledger.Ledger`` queues ``UsageRecord``s and
a write-behind batcher calls ``insert_many``. Delivery is at-least-once (a batch whose commit
was lost with the connection is spooled and stored again), so ``insert_many`` skips rows it
already holds: one row per record, by (request id, time it ended).

Reports aggregate over a time range (``since`` inclusive, ``until`` exclusive), grouped by any
of key, owner and model and by UTC day or hour. Every query is a range of the primary key
(time first), or of the index of one key or one owner (``store.schema.usage_ledger``): a
report reads the rows of its range, not the table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, NamedTuple

import sqlalchemy as sa

from swarmgate.store.schema import usage_ledger
from swarmgate.store.sql import Database

GROUPS: Final = {"key": "key_id", "owner": "owner", "model": "model"}
BUCKETS: Final = {"day": 86400, "hour": 3600}
Bucket = Literal["day", "hour"]


class UsageRecord(NamedTuple):
    """One request, as the ledger keeps it. A named tuple: built in ``Accounting.finish`` for
    every request, where a dataclass would cost several times as much."""

    request_id: str
    ts: float  # epoch seconds when the request ended
    key_id: str | None
    owner: str
    tier: str
    model: str | None
    deployment: str | None
    route: str
    tokens_in: int
    tokens_out: int
    cost: float
    latency: float  # seconds
    ttft: float | None  # seconds to the first byte sent to the client; None: nothing streamed
    status: int
    streamed: bool
    cut: bool  # a stream (or relayed body) that started and did not end whole


COLUMNS: Final = UsageRecord._fields
# The column sizes of store.schema.usage_ledger. Values are clipped when stored, off the hot
# path: a longer one (a JWT's subject, say) would fail its whole batch on PostgreSQL, and a
# batch that can never be stored would hold up the spool for good.
TEXT_LIMITS: Final = {
    "request_id": 128,
    "key_id": 40,
    "owner": 200,
    "tier": 64,
    "model": 200,
    "deployment": 200,
    "route": 64,
}


_CLIPPED: Final = tuple((COLUMNS.index(name), limit) for name, limit in TEXT_LIMITS.items())


def _values(record: UsageRecord) -> tuple[Any, ...]:
    for i, limit in _CLIPPED:
        value: Any = record[i]
        if value is not None and len(value) > limit:
            break
    else:
        return record  # the usual case: nothing to clip
    values: list[Any] = list(record)
    for i, limit in _CLIPPED:
        if values[i] is not None:
            values[i] = values[i][:limit]
    return tuple(values)


# Rows per INSERT statement: 16 columns x 500 = 8,000 parameters, within SQLite's 32,766.
ROWS_PER_STATEMENT: Final = 500


def _insert_sql(placeholder: str, rows: int) -> str:
    # Written out for the driver: SQLAlchemy's per-row parameter processing cost ~40 µs a
    # record, CPU taken from the requests the same process serves. On SQLite one multi-row
    # INSERT per chunk, since an executemany releases and retakes the GIL at every row, against
    # the event loop serving requests.
    row = "(" + ", ".join([placeholder] * len(COLUMNS)) + ")"
    return (
        f"INSERT INTO usage_ledger ({', '.join(COLUMNS)}) VALUES {', '.join([row] * rows)} "
        "ON CONFLICT (ts, request_id) DO NOTHING"
    )


@dataclass(frozen=True, slots=True)
class UsageFilter:
    """What a report covers. ``since`` inclusive, ``until`` exclusive (epoch seconds)."""

    since: float
    until: float
    key_id: str | None = None
    owner: str | None = None
    model: str | None = None


class UsageStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._placeholder = "%s" if db.dialect == "postgresql" else "?"
        self._full = _insert_sql(self._placeholder, ROWS_PER_STATEMENT)

    def _statement(self, rows: int) -> str:
        # Only the full chunk's text is kept: a batch's remainder has any length.
        return self._full if rows == ROWS_PER_STATEMENT else _insert_sql(self._placeholder, rows)

    async def insert_many(self, records: Sequence[UsageRecord]) -> None:
        """Store a batch in one transaction; records already stored are skipped."""
        if not records:
            return
        async with self._db.begin() as conn:
            if self._db.dialect == "postgresql":
                # psycopg pipelines an executemany: one round trip for the batch.
                rows = [_values(record) for record in records]
                await conn.exec_driver_sql(self._statement(1), rows)
                return
            for first in range(0, len(records), ROWS_PER_STATEMENT):
                chunk = records[first : first + ROWS_PER_STATEMENT]
                params = tuple(value for record in chunk for value in _values(record))
                await conn.exec_driver_sql(self._statement(len(chunk)), params)

    def _bucket(self, bucket: Bucket) -> sa.ColumnElement[Any]:
        size = BUCKETS[bucket]
        ts = usage_ledger.c.ts
        if self._db.dialect == "sqlite":
            # CAST truncates, which is the floor for times after 1970.
            return sa.cast(ts / size, sa.BigInteger) * size
        return sa.cast(sa.func.floor(ts / size), sa.BigInteger) * size

    @staticmethod
    def _where(query: sa.Select[Any], f: UsageFilter) -> sa.Select[Any]:
        c = usage_ledger.c
        query = query.where(c.ts >= f.since, c.ts < f.until)
        if f.key_id is not None:
            query = query.where(c.key_id == f.key_id)
        if f.owner is not None:
            query = query.where(c.owner == f.owner)
        if f.model is not None:
            query = query.where(c.model == f.model)
        return query

    def report_query(
        self, f: UsageFilter, group_by: Sequence[str], bucket: Bucket | None
    ) -> sa.Select[Any]:
        """The aggregate query (``group_by`` names from ``GROUPS``), for ``report`` and for
        looking at its plan."""
        c = usage_ledger.c
        keys: list[sa.ColumnElement[Any]] = []
        if bucket is not None:
            keys.append(self._bucket(bucket).label("bucket"))
        keys.extend(c[GROUPS[name]].label(name) for name in group_by)
        values = (
            sa.func.count().label("requests"),
            sa.func.sum(sa.case((c.status >= 400, 1), else_=0)).label("errors"),
            sa.func.sum(sa.case((c.cut, 1), else_=0)).label("cut"),
            sa.func.sum(c.tokens_in).label("tokens_in"),
            sa.func.sum(c.tokens_out).label("tokens_out"),
            sa.func.sum(c.cost).label("cost"),
            sa.func.avg(c.latency).label("latency_avg"),
        )
        query: sa.Select[Any] = self._where(sa.select(*keys, *values), f)
        if keys:
            query = query.group_by(*keys).order_by(*keys)
        return query

    async def report(
        self, f: UsageFilter, group_by: Sequence[str] = (), bucket: Bucket | None = "day"
    ) -> list[dict[str, Any]]:
        """One row per group and bucket: requests, errors (status >= 400), cut streams,
        tokens in and out, cost and mean latency. ``bucket`` is the bucket's start (UTC)."""
        query = self.report_query(f, group_by, bucket)
        async with self._db.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        out = []
        for row in rows:
            item = dict(row)
            for name in ("requests", "errors", "cut", "tokens_in", "tokens_out"):
                item[name] = int(item[name] or 0)
            item["cost"] = float(item["cost"] or 0.0)
            item["latency_avg"] = float(item["latency_avg"] or 0.0)
            if "bucket" in item:
                item["bucket"] = int(item["bucket"])
            out.append(item)
        return out

    async def spend(self, since: float, by: Literal["key", "owner"]) -> dict[str, float]:
        """Spend since ``since`` per key (or owner): what budgets are rebuilt from at start."""
        column = usage_ledger.c[GROUPS[by]]
        query = (
            sa.select(column, sa.func.sum(usage_ledger.c.cost))
            .where(usage_ledger.c.ts >= since, column.is_not(None))
            .group_by(column)
        )
        async with self._db.connect() as conn:
            return {name: float(total or 0.0) for name, total in await conn.execute(query)}

    async def count(self) -> int:
        async with self._db.connect() as conn:
            return int(
                (
                    await conn.execute(sa.select(sa.func.count()).select_from(usage_ledger))
                ).scalar_one()
            )

    async def request_ids(self) -> list[str]:
        """Every stored record's request id (tests and tools check the ledger with it)."""
        async with self._db.connect() as conn:
            result = await conn.execute(sa.select(usage_ledger.c.request_id))
            return [row[0] for row in result]

    async def prune(self, before: float) -> int:
        """Delete the records that ended before ``before``; how many went."""
        async with self._db.begin() as conn:
            result = await conn.execute(usage_ledger.delete().where(usage_ledger.c.ts < before))
            return int(result.rowcount or 0)
