"""The fleet's run-time changes in the SQL store (``fleet_changes``): deployments added through
``POST /api/v1/workers`` (with their config), and deployments drained or removed (with or
without one). Every replica reads them all and rebuilds its fleet from the config file plus
these rows (``routing/registry.py``), so a change outlives a restart and a reload and, with a
shared store, reaches every replica."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from swarmgate.store.schema import fleet_changes
from swarmgate.store.sql import Database

ACTIVE = "active"
DRAINING = "draining"
REMOVED = "removed"


@dataclass(frozen=True, slots=True)
class FleetChange:
    name: str  # the deployment's name: the worker id
    model: str
    spec: dict[str, Any] | None  # its config when added at run time; None: one of the file's
    state: str  # ACTIVE, DRAINING or REMOVED
    created_at: float
    updated_at: float
    updated_by: str | None = None


class DeploymentStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def put(self, change: FleetChange) -> None:
        """Insert or replace the row of ``change.name`` (delete and insert: portable)."""
        async with self._db.begin() as conn:
            await conn.execute(sa.delete(fleet_changes).where(fleet_changes.c.name == change.name))
            await conn.execute(
                sa.insert(fleet_changes).values(
                    name=change.name,
                    model=change.model,
                    spec=change.spec,
                    state=change.state,
                    created_at=change.created_at,
                    updated_at=change.updated_at,
                    updated_by=change.updated_by,
                )
            )

    async def delete(self, name: str) -> bool:
        async with self._db.begin() as conn:
            result = await conn.execute(
                sa.delete(fleet_changes).where(fleet_changes.c.name == name)
            )
            return bool(result.rowcount)

    async def all(self) -> list[FleetChange]:
        query = sa.select(fleet_changes).order_by(fleet_changes.c.created_at, fleet_changes.c.name)
        async with self._db.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [
            FleetChange(
                r["name"],
                r["model"],
                r["spec"],
                r["state"],
                r["created_at"],
                r["updated_at"],
                r["updated_by"],
            )
            for r in rows
        ]
