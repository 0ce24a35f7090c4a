"""The download runner over the memory transport (Ollama's pull lines played in memory) and a
real SQLite store: ordering by priority, the concurrency bound, throttled progress, failures,
and shutdown never leaving a job running."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import orjson
import pytest

from swarmgate.errors import RateLimited, ServiceUnavailable
from swarmgate.jobs.downloads import INTERRUPTED, NEVER_STARTED, Downloads, pull_name
from swarmgate.store.downloads import Download, DownloadStatus, DownloadStore, Progress
from swarmgate.store.migrate import migrate
from swarmgate.store.sql import Database
from swarmgate.types import Origin
from swarmgate.upstream.memory import MemoryResponse, MemoryTransport, SentRequest

ORIGIN = Origin("http://ollama")
SIZE = 1000


class RecordingStore(DownloadStore):
    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.updates: list[tuple[str, Progress]] = []

    async def update(self, download_id: str, progress: Progress) -> bool:
        self.updates.append((download_id, progress))
        return await super().update(download_id, progress)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[RecordingStore]:
    db = Database.from_url(f"sqlite:///{tmp_path / 'jobs.db'}")
    await migrate(db)
    yield RecordingStore(db)
    await db.close()


def job(job_id: str, priority: str = "normal", source: str = "ollama") -> Download:
    return Download(job_id, job_id, source, priority, DownloadStatus.QUEUED, 1.0, 1.0, "key_x")


def line(**fields: object) -> bytes:
    return orjson.dumps(fields) + b"\n"


def layer(steps: int) -> list[bytes]:
    return [
        line(status="pulling abc", digest="sha256:abc", total=SIZE, completed=SIZE * n // steps)
        for n in range(1, steps + 1)
    ]


def serving(lines: Callable[[str], list[bytes]]) -> MemoryTransport:
    async def handler(sent: SentRequest) -> MemoryResponse:
        model = str(orjson.loads(sent.body)["model"])
        return MemoryResponse.sse(*lines(model))

    return MemoryTransport(handler)


async def finished(store: DownloadStore, job_id: str, timeout: float = 5.0) -> Download:
    async with asyncio.timeout(timeout):
        while True:
            stored = await store.get(job_id)
            assert stored is not None
            if stored.status in (DownloadStatus.DONE, DownloadStatus.FAILED):
                return stored
            await asyncio.sleep(0.01)


async def test_a_pull_ends_done_with_every_byte(store: RecordingStore) -> None:
    success = [line(status="pulling manifest"), *layer(4), line(status="success")]
    downloads = Downloads(store, serving(lambda _: success), ORIGIN, throttle=3600)
    downloads.start()
    try:
        await downloads.submit(job("dl_1"))
        done = await finished(store, "dl_1")
    finally:
        await downloads.stop()
    assert done.status is DownloadStatus.DONE and done.error is None
    assert done.total_bytes == done.completed_bytes == SIZE
    assert done.last_status == "success"
    # Throttled: the "running" mark, the first line, the end; no write per line.
    statuses = [(p.status, p.last_status) for _, p in store.updates]
    assert statuses == [
        (DownloadStatus.RUNNING, None),
        (DownloadStatus.RUNNING, "pulling manifest"),
        (DownloadStatus.DONE, "success"),
    ]


async def test_progress_is_written_as_it_streams_without_a_throttle(
    store: RecordingStore,
) -> None:
    success = [*layer(4), line(status="success")]
    downloads = Downloads(store, serving(lambda _: success), ORIGIN, throttle=0)
    downloads.start()
    try:
        await downloads.submit(job("dl_2"))
        await finished(store, "dl_2")
    finally:
        await downloads.stop()
    completed = [p.completed_bytes for _, p in store.updates if p.completed_bytes is not None]
    assert completed[:4] == [250, 500, 750, 1000]


async def test_layers_are_summed(store: RecordingStore) -> None:
    lines = [
        line(status="pulling a", digest="a", total=100, completed=100),
        line(status="pulling b", digest="b", total=300, completed=300),
        line(status="success"),
    ]
    downloads = Downloads(store, serving(lambda _: lines), ORIGIN)
    downloads.start()
    try:
        await downloads.submit(job("dl_3"))
        done = await finished(store, "dl_3")
    finally:
        await downloads.stop()
    assert done.total_bytes == done.completed_bytes == 400


async def test_ollamas_error_fails_the_job_with_it(store: RecordingStore) -> None:
    refusal = [line(status="pulling manifest"), line(error="file does not exist")]
    downloads = Downloads(store, serving(lambda _: refusal), ORIGIN)
    downloads.start()
    try:
        await downloads.submit(job("dl_4"))
        failed = await finished(store, "dl_4")
    finally:
        await downloads.stop()
    assert failed.status is DownloadStatus.FAILED
    assert failed.error is not None and "file does not exist" in failed.error


async def test_a_stream_that_ends_without_success_fails(store: RecordingStore) -> None:
    downloads = Downloads(store, serving(lambda _: layer(2)), ORIGIN)
    downloads.start()
    try:
        await downloads.submit(job("dl_5"))
        failed = await finished(store, "dl_5")
    finally:
        await downloads.stop()
    assert failed.status is DownloadStatus.FAILED and "without reporting success" in (
        failed.error or ""
    )


def gated(gate: asyncio.Event, pulled: list[str]) -> MemoryTransport:
    async def lines() -> AsyncIterator[bytes]:
        await gate.wait()
        yield line(status="success")

    async def handler(sent: SentRequest) -> MemoryResponse:
        pulled.append(str(orjson.loads(sent.body)["model"]))
        return MemoryResponse.sse_from(lines())

    return MemoryTransport(handler)


async def test_at_most_concurrency_pulls_run_at_once(store: RecordingStore) -> None:
    gate, pulled = asyncio.Event(), []
    downloads = Downloads(store, gated(gate, pulled), ORIGIN, concurrency=2)
    downloads.start()
    try:
        for job_id in "abcd":
            await downloads.submit(job(job_id))
        await asyncio.sleep(0.05)
        assert sorted(pulled) == ["a", "b"]  # two at once, the rest wait
        waiting = await store.get("c")
        assert waiting is not None and waiting.status is DownloadStatus.QUEUED
        gate.set()
        for job_id in "abcd":
            assert (await finished(store, job_id)).status is DownloadStatus.DONE
    finally:
        await downloads.stop()


async def test_queued_jobs_run_by_priority_then_in_order(store: RecordingStore) -> None:
    gate, pulled = asyncio.Event(), []
    downloads = Downloads(store, gated(gate, pulled), ORIGIN, concurrency=1)
    downloads.start()
    try:
        await downloads.submit(job("first", "low"))
        await asyncio.sleep(0.05)  # "first" holds the only worker
        for job_id, priority in [("c", "low"), ("d", "normal"), ("e", "high"), ("f", "normal")]:
            await downloads.submit(job(job_id, priority))
        gate.set()
        for job_id in "cdef":
            assert (await finished(store, job_id)).status is DownloadStatus.DONE
    finally:
        await downloads.stop()
    assert pulled == ["first", "e", "d", "f", "c"]


async def test_shutdown_fails_running_and_queued_jobs(store: RecordingStore) -> None:
    gate, pulled = asyncio.Event(), []  # never set: the pull hangs
    downloads = Downloads(store, gated(gate, pulled), ORIGIN, concurrency=1)
    downloads.start()
    await downloads.submit(job("running"))
    await downloads.submit(job("waiting"))
    await asyncio.sleep(0.05)
    await downloads.stop()
    running, waiting = await store.get("running"), await store.get("waiting")
    assert running is not None and waiting is not None
    assert (running.status, running.error) == (DownloadStatus.FAILED, INTERRUPTED)
    assert (waiting.status, waiting.error) == (DownloadStatus.FAILED, NEVER_STARTED)
    assert pulled == ["running"]


async def test_a_silent_server_times_out(store: RecordingStore) -> None:
    gate, pulled = asyncio.Event(), []
    downloads = Downloads(store, gated(gate, pulled), ORIGIN, idle_timeout=0.05)
    downloads.start()
    try:
        await downloads.submit(job("dl_6"))
        failed = await finished(store, "dl_6")
    finally:
        await downloads.stop()
    assert failed.status is DownloadStatus.FAILED and "no progress" in (failed.error or "")


async def test_refusals_before_anything_is_stored(store: RecordingStore) -> None:
    with pytest.raises(ServiceUnavailable, match="ollama_url"):
        await Downloads(store, serving(lambda _: []), None).submit(job("x"))
    assert await store.get("x") is None
    full = Downloads(store, serving(lambda _: []), ORIGIN, queue_size=1)  # not started
    await full.submit(job("y"))
    with pytest.raises(RateLimited) as refused:
        await full.submit(job("z"))
    assert refused.value.headers["retry-after"] and await store.get("z") is None
    await full.stop()


def test_hugging_face_names_are_pulled_through_hf_co() -> None:
    assert pull_name("huggingface", "bartowski/Llama-3.2-1B-GGUF") == (
        "hf.co/bartowski/Llama-3.2-1B-GGUF"
    )
    assert pull_name("huggingface", "hf.co/x/y:Q4_K_M") == "hf.co/x/y:Q4_K_M"
    assert pull_name("ollama", "llama3.2:1b") == "llama3.2:1b"
