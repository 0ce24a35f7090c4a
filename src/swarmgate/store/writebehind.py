"""Write-behind: record now, store in batches later, and lose nothing while the disk works.

``WriteBehind.put`` is synchronous and never awaits (DESIGN.md: the hot path never waits on a
database write). It appends to a bounded in-memory queue. A background task flushes the queue
through a *sink* (an async callable that stores one batch, e.g. ``AuditStore.insert_many``) in
batches, every ``flush_interval`` seconds or as soon as a batch is full. The mechanism knows
nothing of the records: a ``Codec`` turns one into a JSON line and back, and only when a record
goes to the spool (the queue holds the caller's objects as they are: nothing is encoded on the
hot path). The audit log, keys' last-use times and the usage ledger each run one.

Nothing is dropped while the disk works:

- The sink fails (``StoreError``, a timeout, any error of the sink): the batch and everything
  still queued are appended to the spool, an append-only JSON-lines file.
- The queue is full (the store is slower than the callers): ``put`` moves the oldest half of
  the queue to the spool in one buffered write; that is the only time ``put`` touches disk.
- Every flush first replays the spool, oldest first, before the queue. The spool is renamed to
  ``<spool>.replay`` and read in batches; after each stored batch the replayed byte count is
  saved (``<spool>.replay.offset``, replaced atomically), and the file is removed at its end.
  New spool writes meanwhile go to a fresh ``<spool>``, so a replay never races an append.

Delivery is at-least-once, so sinks must tolerate a batch stored twice. A crash between the
store committing a replayed batch and the offset file being replaced replays that one batch
again after restart; the alternative (a unique event id in every row) would cost an index on the
hottest tables for a window of microseconds. Records still in memory when the process is killed
are lost; ``stop()`` flushes them on a graceful shutdown. Spool writes are flushed to the OS
(they survive a crash of the process, not of the machine).

Plain integer counters (``queued``, ``written``, ``spooled``, ``replayed``, ``dropped``; see
``counts``) say what became of the records, for metrics read at scrape time: they are changed
on the event loop's thread only, so they need no lock.

Every spool operation runs on the event loop's thread, so within a process appends and renames
never interleave. Several workers of one gateway share the spool path: ``<spool>.lock``
(``flock``, taken without waiting) lets one worker at a time replay, and ``<spool>.append.lock``
(shared by appenders, exclusive for the microseconds of a replay's rename) keeps a worker's
append out of a file another worker has just taken for replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Generic, TypeVar

from swarmgate.errors import StoreError

log = logging.getLogger(__name__)

R = TypeVar("R")

Sink = Callable[[Sequence[R]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Codec(Generic[R]):
    """One record as one JSON line (no newline) and back. ``decode`` raises ``ValueError``,
    ``TypeError`` or ``KeyError`` for a line that is not a record (e.g. one torn by a crash)."""

    encode: Callable[[R], bytes]
    decode: Callable[[bytes], R]


class Spool(Generic[R]):
    """The append-only spool file and its replay file (see the module docstring)."""

    def __init__(self, path: Path, codec: Codec[R], what: str) -> None:
        self.path = path
        self.replay_path = path.with_name(path.name + ".replay")
        self.offset_path = path.with_name(path.name + ".replay.offset")
        self.lock_path = path.with_name(path.name + ".lock")
        self.append_lock_path = path.with_name(path.name + ".append.lock")
        self._codec = codec
        self._what = what

    def try_lock(self) -> IO[bytes] | None:
        """The right to replay, exclusive across the processes sharing this spool (workers of
        one gateway): an open lock file, or None if another process holds it now."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = self.lock_path.open("ab")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            return None
        return f

    def append(self, records: Iterable[R]) -> None:
        encode = self._codec.encode
        data = b"".join(encode(record) + b"\n" for record in records)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Shared with other appenders, exclusive with a replay's rename (held for microseconds):
        # a line is never written into a file that a worker has already taken for replay.
        with self._append_lock(fcntl.LOCK_SH), self.path.open("ab") as f:
            f.write(data)

    @contextlib.contextmanager
    def _append_lock(self, mode: int) -> Iterator[None]:
        with self.append_lock_path.open("ab") as lock:
            fcntl.flock(lock.fileno(), mode)
            yield

    def next_replay(self) -> int | None:
        """The offset to replay the replay file from, starting a new one if needed; None when
        there is nothing to replay."""
        if self.replay_path.exists():
            try:
                return int(self.offset_path.read_text())
            except (OSError, ValueError):
                return 0
        if not self.path.exists() or self.path.stat().st_size == 0:
            return None
        self.offset_path.unlink(missing_ok=True)
        with self._append_lock(fcntl.LOCK_EX):
            os.replace(self.path, self.replay_path)
        return 0

    def read(self, offset: int, limit: int) -> tuple[list[R], int, bool]:
        """Up to ``limit`` records from ``offset``: (records, next offset, at end of file)."""
        records: list[R] = []
        decode = self._codec.decode
        with self.replay_path.open("rb") as f:
            f.seek(offset)
            while len(records) < limit:
                line = f.readline()
                if not line:
                    return records, offset, True
                offset += len(line)
                if not line.strip():
                    continue
                try:
                    records.append(decode(line))
                except (ValueError, TypeError, KeyError):
                    log.error("%s spool %s: skipping a corrupt line", self._what, self.replay_path)
            at_end = f.read(1) == b""
        return records, offset, at_end

    def advance(self, offset: int) -> None:
        tmp = self.offset_path.with_name(self.offset_path.name + ".tmp")
        tmp.write_text(str(offset))
        os.replace(tmp, self.offset_path)

    def finish_replay(self) -> None:
        self.replay_path.unlink(missing_ok=True)
        self.offset_path.unlink(missing_ok=True)


class WriteBehind(Generic[R]):
    """A bounded write-behind queue of records, flushed to a sink in batches, spooled to disk
    when the sink fails. ``what`` names the records in logs and the writer task."""

    def __init__(
        self,
        sink: Sink[R],
        codec: Codec[R],
        spool_path: Path,
        *,
        what: str,
        flush_interval: float,
        queue_size: int,
        batch_size: int = 500,
        insert_timeout: float = 30.0,
    ) -> None:
        self._sink = sink
        self._what = what
        self._interval = flush_interval
        self._queue_size = queue_size
        self._batch_size = batch_size
        self._insert_timeout = insert_timeout
        self._spool = Spool(spool_path, codec, what)
        self._queue: deque[R] = deque()
        self._wake = asyncio.Event()
        self._flushing = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.queued = 0  # records put
        self.written = 0  # records the sink stored, from the queue or the spool
        self.spooled = 0  # records written to the spool
        self.replayed = 0  # records stored from the spool (also counted in ``written``)
        self.dropped = 0  # records lost because the spool itself could not be written

    @property
    def pending(self) -> int:
        """Records waiting in memory (not counting the spool)."""
        return len(self._queue)

    def counts(self) -> dict[str, int]:
        """What became of the records so far (totals since this writer was built)."""
        return {
            "queued": self.queued,
            "written": self.written,
            "spooled": self.spooled,
            "replayed": self.replayed,
            "dropped": self.dropped,
        }

    def put(self, record: R) -> None:
        """Queue one record. Never awaits; never raises for a full queue or a failing disk."""
        self.queued += 1
        self._queue.append(record)
        if len(self._queue) > self._queue_size:
            self._spill()
        if len(self._queue) >= self._batch_size:
            self._wake.set()

    def _spill(self) -> None:
        # One write for half the queue keeps the rare blocking write amortised; the oldest go
        # first because the spool is replayed before the queue.
        count = max(1, self._queue_size // 2)
        oldest = [self._queue.popleft() for _ in range(min(count, len(self._queue)))]
        try:
            self._spool.append(oldest)
            self.spooled += len(oldest)
        except OSError:
            self.dropped += len(oldest)
            log.exception(
                "%s queue full and spool unwritable: %d records lost", self._what, len(oldest)
            )

    async def start(self) -> None:
        if self._task is None:
            self._closing = False
            self._task = asyncio.create_task(self._run(), name=f"{self._what}-writer")

    async def stop(self) -> None:
        """Stop the writer and store (or spool) everything still queued."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            # Not cancelled: a batch being inserted must finish or reach the spool first.
            await self._task
            self._task = None
        await self.flush()

    async def _run(self) -> None:
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
            except Exception:
                log.exception(
                    "%s writer: flush failed; retrying in %.1f s", self._what, self._interval
                )

    async def flush(self) -> None:
        """Replay the spool, then store the queue, in batches; spool it all if the sink fails."""
        async with self._flushing:
            while True:
                # The spool holds older records than the queue (spilled or failed earlier, and
                # a spill can happen while a batch is being stored): it always goes first.
                if not await self._replay():
                    self._spool_queue()
                    return
                if not self._queue:
                    return
                batch = [self._queue.popleft() for _ in range(min(self._batch_size, self.pending))]
                try:
                    stored = await self._insert(batch)
                except BaseException:  # cancelled: keep the batch for stop()'s flush
                    self._queue.extendleft(reversed(batch))
                    raise
                if not stored:
                    self._queue.extendleft(reversed(batch))
                    self._spool_queue()
                    return
                self.written += len(batch)

    async def _replay(self) -> bool:
        """Store the spool, oldest first. False if the sink failed (the spool is kept)."""
        spool = self._spool
        try:
            lock = spool.try_lock()
        except OSError:
            log.exception("%s spool %s: cannot open its lock file", self._what, spool.lock_path)
            return True
        if lock is None:
            return True  # another worker is replaying the shared spool; it will finish it
        try:
            while (start := spool.next_replay()) is not None:
                records, offset, at_end = await asyncio.to_thread(
                    spool.read, start, self._batch_size
                )
                if records and not await self._insert(records):
                    return False
                self.written += len(records)
                self.replayed += len(records)
                if at_end:
                    spool.finish_replay()
                else:
                    await asyncio.to_thread(spool.advance, offset)
            return True
        finally:
            lock.close()

    def _spool_queue(self) -> None:
        batch = list(self._queue)
        try:
            self._spool.append(batch)
        except OSError:
            # Kept in memory (still bounded by put's spill) to retry at the next flush.
            log.exception("%s spool %s unwritable", self._what, self._spool.path)
            return
        self.spooled += len(batch)
        self._queue.clear()

    async def _insert(self, records: Sequence[R]) -> bool:
        try:
            async with asyncio.timeout(self._insert_timeout):
                await self._sink(records)
        except (StoreError, TimeoutError) as exc:
            log.warning(
                "%s store unavailable (%s); spooling %d records", self._what, exc, len(records)
            )
            return False
        except Exception:
            # A bug in the sink, but losing the records over it would be worse than spooling.
            log.exception("%s sink failed; spooling %d records", self._what, len(records))
            return False
        return True
