"""Model downloads run in the background of the process that accepted them.

A job is stored (``queued``) before its id is answered, then waits in a priority queue (high,
normal, low; first come first served within one) for one of ``concurrency`` worker tasks, which
pulls it through Ollama's ``POST /api/pull`` (``upstream/ollama.py``) and writes its progress
to the store as the lines stream: at most every ``throttle`` seconds, and at the end. Every
replica reads a job from the store, so any of them answers ``GET .../download/{id}``.

Nothing is left ``running`` or ``queued`` by a clean shutdown: ``stop`` cancels the workers, a
cancelled pull marks its job failed, and jobs still queued are failed too. (A process killed
outright leaves its jobs as they were last written; see docs/api.md.)
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass, field

from swarmgate.errors import (
    GatewayError,
    RateLimited,
    ServiceUnavailable,
    StoreError,
    UpstreamError,
    UpstreamTimeout,
)
from swarmgate.store.downloads import Download, DownloadStatus, DownloadStore, Progress
from swarmgate.types import Clock, Origin, Transport
from swarmgate.upstream.ollama import PullProgress, pull

log = logging.getLogger(__name__)

PRIORITIES: dict[str, int] = {"high": 0, "normal": 1, "low": 2}
SOURCES = ("ollama", "huggingface")
HF_PREFIXES = ("hf.co/", "huggingface.co/")
INTERRUPTED = "interrupted: the gateway shut down during the download"
NEVER_STARTED = "interrupted: the gateway shut down before the download started"
QUEUE_FULL_RETRY_AFTER = "30"


def pull_name(source: str, model_name: str) -> str:
    """The name Ollama pulls: Hugging Face repositories are ``hf.co/<owner>/<repo>[:quant]``."""
    if source == "huggingface" and not model_name.startswith(HF_PREFIXES):
        return "hf.co/" + model_name
    return model_name


@dataclass(slots=True)
class _Tally:
    """A pull's progress so far. Ollama reports each layer (digest) on its own, so the job's
    bytes are the sums over the layers seen."""

    totals: dict[str, int] = field(default_factory=dict)
    completed: dict[str, int] = field(default_factory=dict)
    last_status: str | None = None
    succeeded: bool = False

    def add(self, line: PullProgress) -> None:
        self.last_status = line.status or self.last_status
        self.succeeded = self.succeeded or line.done
        if line.digest is not None and line.total is not None:
            self.totals[line.digest] = line.total
            self.completed[line.digest] = line.completed or 0

    def progress(self, status: DownloadStatus, now: float, error: str | None = None) -> Progress:
        total = sum(self.totals.values()) if self.totals else None
        done = sum(self.completed.values()) if self.totals else None
        return Progress(status, now, total, done, self.last_status, error)


class Downloads:
    """This process's download jobs: the queue, the workers, their writes to the store."""

    def __init__(
        self,
        store: DownloadStore,
        transport: Transport,
        origin: Origin | None,
        *,
        concurrency: int = 2,
        queue_size: int = 100,
        idle_timeout: float = 300.0,
        throttle: float = 0.5,
        clock: Clock = time.time,
        monotonic: Clock = time.monotonic,
    ) -> None:
        self.store = store
        self.transport = transport
        self.origin = origin
        self.concurrency = concurrency
        self.queue_size = queue_size
        self.idle_timeout = idle_timeout
        self.throttle = throttle
        self.clock = clock
        self.monotonic = monotonic
        self._queue: asyncio.PriorityQueue[tuple[int, int, Download]] = asyncio.PriorityQueue()
        self._order = itertools.count()
        self._workers: set[asyncio.Task[None]] = set()

    async def submit(self, job: Download) -> None:
        """Store ``job`` (queued) and queue it; refused when no Ollama server is configured
        (503) or this process's queue is full (429)."""
        if self.origin is None:
            raise ServiceUnavailable(
                "model downloads are not configured on this gateway (native.ollama_url)"
            )
        if self._queue.qsize() >= self.queue_size:
            raise RateLimited(
                f"{self.queue_size} downloads are already waiting on this gateway; retry later",
                headers={"retry-after": QUEUE_FULL_RETRY_AFTER},
            )
        try:
            await self.store.create(job)
        except StoreError as exc:
            raise ServiceUnavailable("the job store cannot be reached") from exc
        # Stored first: the id is answered only once any replica can read the job.
        self._queue.put_nowait((PRIORITIES[job.priority], next(self._order), job))

    def start(self) -> None:
        for n in range(self.concurrency):
            task = asyncio.create_task(self._work(), name=f"swarmgate-download-{n}")
            self._workers.add(task)
            task.add_done_callback(self._workers.discard)

    async def stop(self) -> None:
        """Cancel the running pulls (each marks its job failed), then fail the queued jobs."""
        workers = list(self._workers)
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        while not self._queue.empty():
            _, _, job = self._queue.get_nowait()
            await self._write(
                job.id, Progress(DownloadStatus.FAILED, self.clock(), error=NEVER_STARTED)
            )

    async def _work(self) -> None:
        while True:
            _, _, job = await self._queue.get()
            await self._run(job)

    async def _run(self, job: Download) -> None:
        tally = _Tally()
        try:
            # Inside the try: a shutdown that lands on this first write must fail the job too.
            await self._write(job.id, tally.progress(DownloadStatus.RUNNING, self.clock()))
            await self._pull(job, tally)
        except asyncio.CancelledError:
            # Shutdown: the row must not stay "running" for ever. The write is awaited inside
            # the cancelled task, which is allowed: the cancellation has been delivered.
            await self._write(
                job.id, tally.progress(DownloadStatus.FAILED, self.clock(), INTERRUPTED)
            )
            raise
        except GatewayError as exc:
            log.info("download %s of %r failed: %s", job.id, job.model_name, exc.message)
            await self._write(
                job.id, tally.progress(DownloadStatus.FAILED, self.clock(), exc.message)
            )
        except Exception:
            log.exception("download %s of %r: unexpected error", job.id, job.model_name)
            error = "internal error in the gateway; see its log for this download id"
            await self._write(job.id, tally.progress(DownloadStatus.FAILED, self.clock(), error))
        else:
            await self._write(job.id, tally.progress(DownloadStatus.DONE, self.clock()))

    async def _pull(self, job: Download, tally: _Tally) -> None:
        assert self.origin is not None  # submit refuses jobs without one
        name = pull_name(job.source, job.model_name)
        written: float | None = None  # the first line is written at once: the job has begun
        try:
            async with asyncio.timeout(self.idle_timeout) as idle:
                async for line in pull(self.transport, self.origin, name):
                    idle.reschedule(asyncio.get_running_loop().time() + self.idle_timeout)
                    tally.add(line)
                    now = self.monotonic()
                    if written is None or now - written >= self.throttle:
                        written = now
                        running = tally.progress(DownloadStatus.RUNNING, self.clock())
                        await self._write(job.id, running)
        except TimeoutError:
            raise UpstreamTimeout(
                f"the Ollama server sent no progress for {self.idle_timeout:g}s"
            ) from None
        if not tally.succeeded:
            raise UpstreamError("the Ollama server ended the pull without reporting success")

    async def _write(self, job_id: str, progress: Progress) -> None:
        try:
            await self.store.update(job_id, progress)
        except StoreError:
            # A store outage must not end a pull: the next write (or the last) catches up.
            log.warning("download %s: progress not stored (the store is unavailable)", job_id)
