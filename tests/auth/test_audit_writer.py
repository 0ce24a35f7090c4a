from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from swarmgate.auth.audit import FIELD_LIMITS, REDACTED, AuditLog, clean_details, redact
from swarmgate.config import Audit
from swarmgate.errors import StoreError
from swarmgate.store.audit import AuditRecord, AuditStore
from swarmgate.store.migrate import migrate
from swarmgate.store.schema import audit_log
from swarmgate.store.sql import Database

KEY = "sk-sg-" + "Q" * 43
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ"


class MemorySink:
    """The in-memory twin of store.audit.AuditStore; ``failing`` makes it behave like a dead
    database, ``fail_after`` lets that many more batches through first."""

    def __init__(self) -> None:
        self.batches: list[list[AuditRecord]] = []
        self.failing = False
        self.fail_after: int | None = None
        self.error: Exception = StoreError("database is down")
        self.calls = 0

    async def insert_many(self, records: Sequence[AuditRecord]) -> None:
        self.calls += 1
        await asyncio.sleep(0)
        if self.fail_after is not None:
            if self.fail_after == 0:
                raise self.error
            self.fail_after -= 1
        if self.failing:
            raise self.error
        self.batches.append(list(records))

    @property
    def actions(self) -> list[str]:
        return [r.action for batch in self.batches for r in batch]


class Ticker:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 1
        return self.now


MakeLog = Callable[..., AuditLog]


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    return tmp_path / "spool" / "audit.jsonl"


@pytest.fixture
async def make_log(spool: Path) -> AsyncIterator[MakeLog]:
    logs: list[AuditLog] = []

    def make(sink: Any, **options: Any) -> AuditLog:
        config = Audit(
            spool_path=str(spool),
            flush_interval=options.pop("flush_interval", 60.0),
            queue_size=options.pop("queue_size", 10_000),
        )
        log = AuditLog(sink, config, Ticker(), **options)
        logs.append(log)
        return log

    yield make
    for log in logs:
        await log.stop()


def spooled_lines(spool: Path) -> int:
    files = [spool, spool.with_name(spool.name + ".replay")]
    return sum(len(f.read_bytes().splitlines()) for f in files if f.exists())


async def test_record_is_write_behind_and_keeps_order(make_log: MakeLog) -> None:
    sink = MemorySink()
    log = make_log(sink)
    for i in range(5):
        log.record(f"a{i}", actor="alice", target="key_1", client_ip="1.2.3.4", request_id="r")
    assert sink.calls == 0 and log.pending == 5
    await log.flush()
    assert sink.actions == ["a0", "a1", "a2", "a3", "a4"]
    first = sink.batches[0][0]
    assert (first.actor, first.target, first.outcome, first.client_ip) == (
        "alice",
        "key_1",
        "ok",
        "1.2.3.4",
    )
    assert first.ts < sink.batches[0][-1].ts
    assert log.pending == 0


async def test_batches(make_log: MakeLog) -> None:
    sink = MemorySink()
    log = make_log(sink, batch_size=3)
    for i in range(7):
        log.record(f"a{i}")
    await log.flush()
    assert [len(b) for b in sink.batches] == [3, 3, 1]


async def test_background_writer_flushes_on_interval_and_on_full_batch(make_log: MakeLog) -> None:
    sink = MemorySink()
    log = make_log(sink, flush_interval=0.05)
    await log.start()
    log.record("tick")
    async with asyncio.timeout(5):
        while not sink.batches:
            await asyncio.sleep(0.01)
    assert sink.actions == ["tick"]

    sink2 = MemorySink()
    log2 = make_log(sink2, flush_interval=3600.0, batch_size=4)
    await log2.start()
    for i in range(4):
        log2.record(f"b{i}")
    async with asyncio.timeout(5):  # far less than the hour-long interval
        while not sink2.batches:
            await asyncio.sleep(0.01)
    assert sink2.actions == ["b0", "b1", "b2", "b3"]


async def test_store_down_spools_then_replays_in_order(make_log: MakeLog, spool: Path) -> None:
    sink = MemorySink()
    sink.failing = True
    log = make_log(sink, batch_size=2)
    for i in range(5):
        log.record(f"old{i}")
    await log.flush()
    assert sink.batches == [] and log.pending == 0
    assert spooled_lines(spool) == 5

    log.record("old5")
    await log.flush()  # still down: the replay fails first, the queue joins the spool
    assert spooled_lines(spool) == 6

    sink.failing = False
    log.record("new")
    await log.flush()
    assert sink.actions == [*(f"old{i}" for i in range(6)), "new"]
    assert spooled_lines(spool) == 0
    # Only the (empty) lock files that coordinate workers sharing the spool are left.
    assert sorted(p.name for p in spool.parent.iterdir()) == [
        "audit.jsonl.append.lock",
        "audit.jsonl.lock",
    ]
    await log.flush()
    assert len(sink.actions) == 7  # a replay that succeeded is not repeated


async def test_one_worker_at_a_time_replays_a_shared_spool(make_log: MakeLog, spool: Path) -> None:
    first, second = MemorySink(), MemorySink()
    first.failing = True
    a = make_log(first)
    b = make_log(second)  # another worker of the same gateway: the same spool path
    for i in range(3):
        a.record(f"old{i}")
    await a.flush()
    assert spooled_lines(spool) == 3
    held = a._spool.try_lock()  # worker a is in the middle of a replay
    assert held is not None
    await b.flush()
    assert second.actions == [] and spooled_lines(spool) == 3
    held.close()
    await b.flush()
    assert second.actions == ["old0", "old1", "old2"] and spooled_lines(spool) == 0


async def test_replay_resumes_where_it_stopped(make_log: MakeLog, spool: Path) -> None:
    sink = MemorySink()
    sink.failing = True
    log = make_log(sink, batch_size=2)
    for i in range(5):
        log.record(f"r{i}")
    await log.flush()

    sink.failing = False
    sink.fail_after = 1  # the store goes down again after one replayed batch
    await log.flush()
    assert sink.actions == ["r0", "r1"]

    # A new process (after a restart) picks the replay up from the saved offset.
    sink2 = MemorySink()
    await make_log(sink2, batch_size=2).flush()
    assert sink2.actions == ["r2", "r3", "r4"]
    assert spooled_lines(spool) == 0


async def test_unexpected_sink_errors_and_hangs_spool_too(
    make_log: MakeLog, spool: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sink = MemorySink()
    sink.failing = True
    sink.error = RuntimeError("bug in the sink")
    log = make_log(sink)
    log.record("a")
    with caplog.at_level(logging.ERROR):
        await log.flush()
    assert "audit sink failed" in caplog.text
    assert spooled_lines(spool) == 1

    class HangingSink:
        async def insert_many(self, records: Sequence[AuditRecord]) -> None:
            await asyncio.sleep(3600)

    hanging = make_log(HangingSink(), insert_timeout=0.05)
    hanging.record("b")
    await hanging.flush()
    assert spooled_lines(spool) == 2

    sink.failing = False
    await log.flush()
    assert sink.actions == ["a", "b"]


async def test_stop_flushes_everything(make_log: MakeLog, spool: Path) -> None:
    sink = MemorySink()
    log = make_log(sink, flush_interval=3600.0)
    await log.start()
    for i in range(10):
        log.record(f"s{i}")
    await log.stop()
    assert len(sink.actions) == 10

    down = MemorySink()
    down.failing = True
    log2 = make_log(down, flush_interval=3600.0)
    await log2.start()
    for i in range(10):
        log2.record(f"d{i}")
    await log2.stop()
    assert log2.pending == 0 and spooled_lines(spool) == 10


async def test_cancelled_flush_keeps_the_batch(make_log: MakeLog, spool: Path) -> None:
    started = asyncio.Event()

    class SlowSink(MemorySink):
        async def insert_many(self, records: Sequence[AuditRecord]) -> None:
            started.set()
            await asyncio.sleep(3600)

    log = make_log(SlowSink(), insert_timeout=0.05)
    log.record("x")
    task = asyncio.create_task(log.flush())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert log.pending == 1
    await log.stop()  # the store still hangs: the batch ends in the spool
    assert log.pending == 0 and spooled_lines(spool) == 1


async def test_memory_is_bounded_and_nothing_is_lost(make_log: MakeLog, spool: Path) -> None:
    sink = MemorySink()
    log = make_log(sink, queue_size=10)
    for i in range(1000):
        log.record(f"m{i}")
        assert log.pending <= 10
    assert spooled_lines(spool) + log.pending == 1000
    await log.flush()
    assert sink.actions == [f"m{i}" for i in range(1000)]
    assert log.dropped == 0


def test_redact_patterns() -> None:
    assert redact(f"key {KEY} used") == f"key {REDACTED} used"
    assert redact("sk-proj-abcdefgh12345") == REDACTED
    assert redact("Authorization: Bearer abc.def") == f"Authorization: Bearer {REDACTED}"
    assert redact(f"bearer {JWT}") == f"bearer {REDACTED}"
    assert redact(f"token={JWT};") == f"token={REDACTED};"
    assert redact("task-list and desk-lamps") == "task-list and desk-lamps"
    assert redact("sk-short") == "sk-short"
    assert redact("key_3f2a sk-sg-AbCd") == "key_3f2a sk-sg-AbCd"  # the visible prefix stays
    assert redact("nul\x00byte") == "nulbyte"


def test_clean_details_is_json_safe() -> None:
    cleaned = clean_details(
        {
            "nested": {"list": [KEY, 1, 2.5, True, None], "password": "hunter2"},
            "Authorization": "Basic dXNlcjpwYXNz",
            "X-API-Key": "anything",
            "ratio": float("nan"),
            "when": Path("/tmp"),
            "tags": {"a"},
            "deep": [[[[[[[[[["too deep"]]]]]]]]]],
        }
    )
    assert cleaned["nested"] == {"list": [REDACTED, 1, 2.5, True, None], "password": REDACTED}
    assert cleaned["Authorization"] == REDACTED
    assert cleaned["X-API-Key"] == REDACTED
    assert cleaned["ratio"] == "nan"
    assert cleaned["when"] == "/tmp"
    assert cleaned["tags"] == ["a"]
    assert "[truncated]" in str(cleaned["deep"])


async def test_secrets_never_reach_the_store_or_the_spool(make_log: MakeLog, spool: Path) -> None:
    sink = MemorySink()
    sink.failing = True
    log = make_log(sink)
    log.record(
        "auth.failure",
        actor=KEY,
        target=f"Bearer {JWT}",
        outcome="denied",
        details={"header": f"Bearer {KEY}", "tokens": [JWT], "api_key": "plain-secret"},
    )
    await log.flush()
    raw = spool.read_bytes()
    for secret in (KEY, JWT, "plain-secret", KEY[10:30]):
        assert secret.encode() not in raw
    sink.failing = False
    await log.flush()
    stored = repr(sink.batches)
    for secret in (KEY, JWT, "plain-secret"):
        assert secret not in stored
    assert sink.batches[0][0].details["header"] == f"Bearer {REDACTED}"


async def test_fields_are_clipped_to_the_columns(make_log: MakeLog) -> None:
    for name, limit in FIELD_LIMITS.items():
        column = audit_log.c[name].type
        assert getattr(column, "length", None) == limit, name
    sink = MemorySink()
    log = make_log(sink)
    log.record("x" * 500, actor="a" * 500, outcome="o" * 100, request_id="r" * 500)
    await log.flush()
    rec = sink.batches[0][0]
    assert (len(rec.action), len(rec.actor or ""), len(rec.outcome), len(rec.request_id or "")) == (
        64,
        200,
        32,
        128,
    )


async def test_corrupt_spool_lines_are_skipped(
    make_log: MakeLog, spool: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool.parent.mkdir(parents=True)
    good = b'{"ts": 1.0, "action": "ok1", "outcome": "ok", "details": {}}\n'
    spool.write_bytes(
        good + b"not json\n" + b'{"ts": 2.0}\n' + good.replace(b"ok1", b"ok2") + b'{"ts"'
    )
    sink = MemorySink()
    with caplog.at_level(logging.ERROR):
        await make_log(sink).flush()
    assert sink.actions == ["ok1", "ok2"]
    assert caplog.text.count("corrupt line") == 3
    assert spooled_lines(spool) == 0


async def test_with_the_real_audit_store_on_sqlite(make_log: MakeLog, tmp_path: Path) -> None:
    # The database directory does not exist yet: the store is "down" (StoreError) until it does.
    db_dir = tmp_path / "db"
    db = Database.from_url(f"sqlite:///{db_dir / 'swarmgate.db'}")
    try:
        store = AuditStore(db)
        log = make_log(store)
        log.record("key.create", actor="admin", target="key_1", details={"secret": KEY})
        await log.flush()
        assert log.pending == 0  # spooled

        db_dir.mkdir()
        await migrate(db)
        log.record("key.revoke", actor="admin", target="key_1", outcome="ok")
        await log.flush()
        records, cursor = await store.query()
        assert [r.action for r in records] == ["key.revoke", "key.create"]  # newest first
        assert cursor is None
        assert records[1].details == {"secret": REDACTED}
        assert records[1].id is not None and records[0].id == records[1].id + 1
    finally:
        await db.close()


async def test_awkward_values_store_on_both_engines(database: Database, make_log: MakeLog) -> None:
    store = AuditStore(database)
    log = make_log(store)
    log.record(
        "a" * 100,
        actor="\x00actor" + "b" * 300,
        client_ip="c" * 100,
        details={"nan": float("inf"), "text": "nul\x00inside", "big": 2**70},
    )
    await log.flush()
    records, _ = await store.query()
    assert len(records) == 1
    assert records[0].action == "a" * 64 and records[0].actor == "actor" + "b" * 195
    assert records[0].details == {"nan": "inf", "text": "nulinside", "big": 2**70}
