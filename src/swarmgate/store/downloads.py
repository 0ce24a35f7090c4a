"""Model download jobs in the SQL store (``model_downloads``): the replica that accepted a job
writes its progress here as the pull streams, so every replica can answer for it."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from swarmgate.store.schema import model_downloads
from swarmgate.store.sql import Database

MAX_ERROR = 1000  # the column's length: an error longer than that is cut, not refused
MAX_STATUS = 500


class DownloadStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Download:
    id: str
    model_name: str
    source: str
    priority: str
    status: DownloadStatus
    created_at: float
    updated_at: float
    requested_by: str | None = None
    total_bytes: int | None = None
    completed_bytes: int | None = None
    last_status: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Progress:
    """What a running job's row is updated with; ``None`` fields keep their stored value."""

    status: DownloadStatus
    updated_at: float
    total_bytes: int | None = None
    completed_bytes: int | None = None
    last_status: str | None = None
    error: str | None = None


def _download(row: sa.RowMapping) -> Download:
    values = dict(row)
    values["status"] = DownloadStatus(values["status"])
    return Download(**values)


class DownloadStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, download: Download) -> None:
        values = dataclasses.asdict(download)
        values["status"] = download.status.value
        async with self._db.begin() as conn:
            await conn.execute(model_downloads.insert().values(values))

    async def get(self, download_id: str) -> Download | None:
        query = model_downloads.select().where(model_downloads.c.id == download_id)
        async with self._db.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        return None if row is None else _download(row)

    async def update(self, download_id: str, progress: Progress) -> bool:
        """Write ``progress`` onto the job; False when there is no such job."""
        values: dict[str, Any] = {
            "status": progress.status.value,
            "updated_at": progress.updated_at,
        }
        if progress.total_bytes is not None:
            values["total_bytes"] = progress.total_bytes
        if progress.completed_bytes is not None:
            values["completed_bytes"] = progress.completed_bytes
        if progress.last_status is not None:
            values["last_status"] = progress.last_status[:MAX_STATUS]
        if progress.error is not None:
            values["error"] = progress.error[:MAX_ERROR]
        query = model_downloads.update().where(model_downloads.c.id == download_id).values(values)
        async with self._db.begin() as conn:
            result = await conn.execute(query)
        return bool(result.rowcount)

    async def recent(self, limit: int = 50) -> list[Download]:
        """The newest jobs first."""
        query = (
            model_downloads.select()
            .order_by(model_downloads.c.created_at.desc(), model_downloads.c.id)
            .limit(limit)
        )
        async with self._db.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_download(row) for row in rows]
