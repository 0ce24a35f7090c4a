"""The audit log in the SQL store: batched inserts and filtered, keyset-paginated queries.

Writers do not call this on the hot path: audit records go through a bounded write-behind queue
that calls ``insert_many`` in batches (see the invariants in DESIGN.md). Pages are read newest
first by ``id`` (keyset pagination), so a page stays stable while new records arrive.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from swarmgate.store.schema import audit_log
from swarmgate.store.sql import Database

MAX_PAGE = 1000


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """Who did what to what, when, and how it ended. ``id`` is set once stored."""

    action: str  # e.g. "key.create", "auth.failure", "ip.block"
    ts: float
    outcome: str = "ok"  # ok | denied | error | ...
    actor: str | None = None
    target: str | None = None
    client_ip: str | None = None
    request_id: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    id: int | None = None


def _record(row: sa.RowMapping) -> AuditRecord:
    return AuditRecord(
        id=row["id"],
        ts=row["ts"],
        action=row["action"],
        outcome=row["outcome"],
        actor=row["actor"],
        target=row["target"],
        client_ip=row["client_ip"],
        request_id=row["request_id"],
        details=row["details"] or {},
    )


class AuditStore:
    """Appends audit records and reads them back."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def insert_many(self, records: Sequence[AuditRecord]) -> None:
        """Store a batch in one transaction (``id`` of the given records is ignored)."""
        if not records:
            return
        rows = [
            {
                "ts": r.ts,
                "action": r.action,
                "outcome": r.outcome,
                "actor": r.actor,
                "target": r.target,
                "client_ip": r.client_ip,
                "request_id": r.request_id,
                "details": dict(r.details),
            }
            for r in records
        ]
        async with self._db.begin() as conn:
            await conn.execute(audit_log.insert(), rows)

    async def query(
        self,
        action: str | None = None,
        actor: str | None = None,
        outcome: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 50,
        cursor: int | None = None,
    ) -> tuple[list[AuditRecord], int | None]:
        """Records matching every given filter, newest first, and the cursor of the next page
        (None on the last page). ``since`` is inclusive, ``until`` exclusive."""
        limit = max(1, min(limit, MAX_PAGE))
        c = audit_log.c
        query = audit_log.select().order_by(c.id.desc()).limit(limit + 1)
        if action is not None:
            query = query.where(c.action == action)
        if actor is not None:
            query = query.where(c.actor == actor)
        if outcome is not None:
            query = query.where(c.outcome == outcome)
        if since is not None:
            query = query.where(c.ts >= since)
        if until is not None:
            query = query.where(c.ts < until)
        if cursor is not None:
            query = query.where(c.id < cursor)
        async with self._db.connect() as conn:
            records = [_record(row) for row in (await conn.execute(query)).mappings()]
        if len(records) > limit:
            records = records[:limit]
            return records, records[-1].id
        return records, None

    async def prune(self, before: float) -> int:
        """Delete the records older than ``before`` (retention); how many went."""
        async with self._db.begin() as conn:
            result = await conn.execute(audit_log.delete().where(audit_log.c.ts < before))
            return int(result.rowcount or 0)
