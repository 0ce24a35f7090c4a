"""The audit trail, written behind the hot path: record now, store in batches later.

``AuditLog.record`` is synchronous and never awaits (DESIGN.md: the hot path never waits on a
database write). It redacts secrets, clips fields to the column sizes and appends to a bounded
in-memory queue. A background task flushes the queue through an ``AuditSink`` (the SQL
``AuditStore``) in batches, every ``flush_interval`` seconds or as soon as a batch is full.

Nothing is dropped while the disk works:

- The store fails (``StoreError``, a timeout, any error of the sink): the batch and everything
  still queued are appended to the spool, an append-only JSON-lines file (``audit.spool_path``).
- The queue is full (the store is slower than the callers): ``record`` moves the oldest half of
  the queue to the spool in one buffered write; that is the only time ``record`` touches disk.
- Every flush first replays the spool, oldest first, before the queue. The spool is renamed to
  ``<spool>.replay`` and read in batches; after each stored batch the replayed byte count is
  saved (``<spool>.replay.offset``, replaced atomically), and the file is removed at its end.
  New spool writes meanwhile go to a fresh ``<spool>``, so a replay never races an append.

Delivery is at-least-once. A crash between the store committing a replayed batch and the offset
file being replaced replays that one batch again after restart; the alternative (a unique
event id in every row) would cost an index on the hottest table for a window of microseconds.
Records still in memory when the process is killed are lost; ``stop()`` flushes them on a
graceful shutdown. Spool writes are flushed to the OS (they survive a crash of the process, not
of the machine).

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
import math
import os
import re
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Final, Protocol

import orjson

from swarmgate.config import Audit
from swarmgate.errors import StoreError
from swarmgate.store.audit import AuditRecord
from swarmgate.types import Clock

log = logging.getLogger(__name__)

REDACTED: Final = "[redacted]"

# "Bearer <anything>", OpenAI-style keys (ours are "sk-sg-..."), and JWT-shaped tokens (a JSON
# header always base64url-encodes to "eyJ").
_SECRET = re.compile(
    r"(?i:\b(bearer)\s+)[^\s,;\"']+"
    r"|(?<![A-Za-z0-9])sk-[A-Za-z0-9_\-]{8,}"
    r"|\beyJ[A-Za-z0-9_\-]*\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*"
)
_SECRET_NAMES: Final = frozenset(
    {
        "authorization",
        "proxy_authorization",
        "api_key",
        "apikey",
        "x_api_key",
        "admin_key",
        "secret",
        "client_secret",
        "password",
        "passwd",
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "private_key",
        "cookie",
        "set_cookie",
    }
)
_MAX_DEPTH: Final = 8

# The column sizes of store.schema.audit_log: a longer value would fail the whole batch on
# PostgreSQL, and a batch that can never be stored would block the spool forever.
FIELD_LIMITS: Final = {
    "action": 64,
    "actor": 200,
    "target": 200,
    "outcome": 32,
    "client_ip": 64,
    "request_id": 128,
}


class AuditSink(Protocol):
    """Where batches go: ``store.audit.AuditStore`` (raises ``StoreError`` when down)."""

    async def insert_many(self, records: Sequence[AuditRecord]) -> None: ...


def redact(text: str) -> str:
    """Replace anything that looks like a credential in ``text``."""

    def replace(match: re.Match[str]) -> str:
        scheme = match.group(1)
        return f"{scheme} {REDACTED}" if scheme else REDACTED

    return _SECRET.sub(replace, text.replace("\x00", ""))


def clean_details(value: Any, depth: int = 0) -> Any:
    """A JSON-safe, redacted copy: secrets out, values under secret names out, NaN as text."""
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if depth >= _MAX_DEPTH:
        return "[truncated]"
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            name = redact(str(key))
            secret = name.lower().replace("-", "_") in _SECRET_NAMES
            out[name] = REDACTED if secret else clean_details(item, depth + 1)
        return out
    if isinstance(value, list | tuple | set | frozenset):
        return [clean_details(item, depth + 1) for item in value]
    return redact(str(value))


def _field(name: str, value: str | None) -> str | None:
    if value is None:
        return None
    return redact(value)[: FIELD_LIMITS[name]]


def _to_line(record: AuditRecord) -> bytes:
    return orjson.dumps(
        {
            "ts": record.ts,
            "action": record.action,
            "outcome": record.outcome,
            "actor": record.actor,
            "target": record.target,
            "client_ip": record.client_ip,
            "request_id": record.request_id,
            "details": record.details,
        }
    )


def _from_line(line: bytes) -> AuditRecord:
    """Raise ValueError/TypeError/KeyError on a line that is not a record (e.g. torn)."""
    raw = orjson.loads(line)
    optional = ("actor", "target", "client_ip", "request_id")
    if not isinstance(raw.get("details"), dict) or not isinstance(raw["action"], str):
        raise ValueError("not an audit record")
    if not all(raw.get(name) is None or isinstance(raw[name], str) for name in optional):
        raise ValueError("not an audit record")
    return AuditRecord(
        ts=float(raw["ts"]),
        action=raw["action"],
        outcome=str(raw["outcome"]),
        actor=raw.get("actor"),
        target=raw.get("target"),
        client_ip=raw.get("client_ip"),
        request_id=raw.get("request_id"),
        details=raw["details"],
    )


class _Spool:
    """The append-only spool file and its replay file (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.replay_path = path.with_name(path.name + ".replay")
        self.offset_path = path.with_name(path.name + ".replay.offset")
        self.lock_path = path.with_name(path.name + ".lock")
        self.append_lock_path = path.with_name(path.name + ".append.lock")

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

    def append(self, records: Iterable[AuditRecord]) -> None:
        data = b"".join(_to_line(record) + b"\n" for record in records)
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

    def read(self, offset: int, limit: int) -> tuple[list[AuditRecord], int, bool]:
        """Up to ``limit`` records from ``offset``: (records, next offset, at end of file)."""
        records: list[AuditRecord] = []
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
                    records.append(_from_line(line))
                except (ValueError, TypeError, KeyError):
                    log.error("audit spool %s: skipping a corrupt line", self.replay_path)
            at_end = f.read(1) == b""
        return records, offset, at_end

    def advance(self, offset: int) -> None:
        tmp = self.offset_path.with_name(self.offset_path.name + ".tmp")
        tmp.write_text(str(offset))
        os.replace(tmp, self.offset_path)

    def finish_replay(self) -> None:
        self.replay_path.unlink(missing_ok=True)
        self.offset_path.unlink(missing_ok=True)


class AuditLog:
    """Bounded write-behind queue of audit records, flushed to a sink in batches."""

    def __init__(
        self,
        sink: AuditSink,
        config: Audit,
        clock: Clock = time.time,
        *,
        batch_size: int = 500,
        insert_timeout: float = 30.0,
    ) -> None:
        self._sink = sink
        self._clock = clock
        self._interval = config.flush_interval
        self._queue_size = config.queue_size
        self._batch_size = batch_size
        self._insert_timeout = insert_timeout
        self._spool = _Spool(Path(config.spool_path))
        self._queue: deque[AuditRecord] = deque()
        self._wake = asyncio.Event()
        self._flushing = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.dropped = 0  # records lost because the spool itself could not be written

    @property
    def pending(self) -> int:
        """Records waiting in memory (not counting the spool)."""
        return len(self._queue)

    def record(
        self,
        action: str,
        *,
        actor: str | None = None,
        target: str | None = None,
        outcome: str = "ok",
        client_ip: str | None = None,
        request_id: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        """Queue one record. Never awaits; never raises for a full queue or a failing disk."""
        self._queue.append(
            AuditRecord(
                ts=self._clock(),
                action=_field("action", action) or "",
                outcome=_field("outcome", outcome) or "",
                actor=_field("actor", actor),
                target=_field("target", target),
                client_ip=_field("client_ip", client_ip),
                request_id=_field("request_id", request_id),
                details=clean_details(details) if details else {},
            )
        )
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
        except OSError:
            self.dropped += len(oldest)
            log.exception("audit queue full and spool unwritable: %d records lost", len(oldest))

    async def start(self) -> None:
        if self._task is None:
            self._closing = False
            self._task = asyncio.create_task(self._run(), name="audit-writer")

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
                log.exception("audit writer: flush failed; retrying in %.1f s", self._interval)

    async def flush(self) -> None:
        """Replay the spool, then store the queue, in batches; spool it all if the store fails."""
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

    async def _replay(self) -> bool:
        """Store the spool, oldest first. False if the store failed (the spool is kept)."""
        spool = self._spool
        try:
            lock = spool.try_lock()
        except OSError:
            log.exception("audit spool %s: cannot open its lock file", spool.lock_path)
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
            # Kept in memory (still bounded by record's spill) to retry at the next flush.
            log.exception("audit spool %s unwritable", self._spool.path)
            return
        self._queue.clear()

    async def _insert(self, records: Sequence[AuditRecord]) -> bool:
        try:
            async with asyncio.timeout(self._insert_timeout):
                await self._sink.insert_many(records)
        except (StoreError, TimeoutError) as exc:
            log.warning("audit store unavailable (%s); spooling %d records", exc, len(records))
            return False
        except Exception:
            # A bug in the sink, but losing the records over it would be worse than spooling.
            log.exception("audit sink failed; spooling %d records", len(records))
            return False
        return True
