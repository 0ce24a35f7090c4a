"""IP blocks in the SQL store (``ip_blocks``), replayed into every replica: operators' blocks
(``source`` ``operator``) and automatic blocks after repeated failures (``failures``), so that
the CLI can list and lift both from outside any gateway."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from swarmgate.store.schema import ip_blocks
from swarmgate.store.sql import Database


@dataclass(frozen=True, slots=True)
class StoredBlock:
    cidr: str
    reason: str
    created_at: float
    expires_at: float | None
    created_by: str
    source: str = "operator"  # or "failures": blocked automatically


class IPBlockStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def put(self, block: StoredBlock) -> None:
        async with self._db.begin() as conn:
            await conn.execute(sa.delete(ip_blocks).where(ip_blocks.c.cidr == block.cidr))
            await conn.execute(
                sa.insert(ip_blocks).values(
                    cidr=block.cidr,
                    reason=block.reason,
                    created_at=block.created_at,
                    expires_at=block.expires_at,
                    created_by=block.created_by,
                    source=block.source,
                )
            )

    async def remove(self, cidr: str) -> bool:
        async with self._db.begin() as conn:
            result = await conn.execute(sa.delete(ip_blocks).where(ip_blocks.c.cidr == cidr))
            return bool(result.rowcount)

    async def active(self, now: float) -> list[StoredBlock]:
        query = sa.select(ip_blocks).where(
            sa.or_(ip_blocks.c.expires_at.is_(None), ip_blocks.c.expires_at > now)
        )
        async with self._db.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [
            StoredBlock(
                r["cidr"],
                r["reason"],
                r["created_at"],
                r["expires_at"],
                r["created_by"],
                r["source"],
            )
            for r in rows
        ]

    async def purge(self, now: float) -> int:
        """Delete blocks that have ended (idempotent, safe on every replica at once)."""
        async with self._db.begin() as conn:
            result = await conn.execute(sa.delete(ip_blocks).where(ip_blocks.c.expires_at <= now))
            return int(result.rowcount)
