"""DownloadStore: model download jobs in and out, on both engines."""

from __future__ import annotations

import pytest

from swarmgate.store.downloads import (
    MAX_ERROR,
    Download,
    DownloadStatus,
    DownloadStore,
    Progress,
)
from swarmgate.store.sql import Database


def _job(job_id: str, created_at: float = 100.0) -> Download:
    return Download(
        id=job_id,
        model_name="llama3.2:1b",
        source="ollama",
        priority="normal",
        status=DownloadStatus.QUEUED,
        created_at=created_at,
        updated_at=created_at,
        requested_by="key_abc",
    )


@pytest.fixture
def downloads(database: Database) -> DownloadStore:
    return DownloadStore(database)


async def test_create_then_get_round_trips_every_field(downloads: DownloadStore) -> None:
    job = _job("dl_a")
    await downloads.create(job)
    assert await downloads.get("dl_a") == job
    assert await downloads.get("dl_missing") is None


async def test_progress_updates_only_the_fields_given(downloads: DownloadStore) -> None:
    await downloads.create(_job("dl_b"))
    # Beyond 32 bits: a model's layers are often larger than 4 GiB.
    big = 7 * 2**32
    running = Progress(DownloadStatus.RUNNING, 101.0, big, 1024, "pulling abc")
    assert await downloads.update("dl_b", running)
    assert await downloads.update("dl_b", Progress(DownloadStatus.RUNNING, 102.0, None, big))
    stored = await downloads.get("dl_b")
    assert stored is not None
    assert (stored.status, stored.total_bytes, stored.completed_bytes) == (
        DownloadStatus.RUNNING,
        big,
        big,
    )
    assert stored.last_status == "pulling abc" and stored.updated_at == 102.0
    assert stored.created_at == 100.0 and stored.error is None


async def test_a_long_error_is_cut_to_the_column(downloads: DownloadStore) -> None:
    await downloads.create(_job("dl_c"))
    failed = Progress(DownloadStatus.FAILED, 103.0, error="x" * (MAX_ERROR + 500))
    assert await downloads.update("dl_c", failed)
    stored = await downloads.get("dl_c")
    assert stored is not None and stored.status is DownloadStatus.FAILED
    assert stored.error == "x" * MAX_ERROR


async def test_updating_an_unknown_job_says_so(downloads: DownloadStore) -> None:
    assert not await downloads.update("dl_none", Progress(DownloadStatus.DONE, 1.0))


async def test_recent_lists_the_newest_first(downloads: DownloadStore) -> None:
    for n in range(5):
        await downloads.create(_job(f"dl_{n}", created_at=100.0 + n))
    assert [d.id for d in await downloads.recent(3)] == ["dl_4", "dl_3", "dl_2"]
    assert len(await downloads.recent()) == 5
