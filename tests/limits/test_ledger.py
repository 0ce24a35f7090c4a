"""The usage ledger's writer: write-behind into the real store, exactly one row per record
through failures, spool and replay, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from swarmgate.config import Ledger as LedgerConfig
from swarmgate.errors import StoreError
from swarmgate.limits.ledger import CODEC, Ledger
from swarmgate.store.sql import Database
from swarmgate.store.usage import COLUMNS, UsageRecord, UsageStore


def record(n: int, **fields: Any) -> UsageRecord:
    values: dict[str, Any] = {
        "request_id": f"req-{n}",
        "ts": 1_800_000_000.0 + n / 1000,
        "key_id": f"key{n % 3}",
        "owner": f"owner{n % 2}",
        "tier": "pro",
        "model": "m",
        "deployment": "d1",
        "route": "/v1/chat/completions",
        "tokens_in": 10 + n,
        "tokens_out": 5,
        "cost": 0.25,
        "latency": 0.125,
        "ttft": 0.0625,
        "status": 200,
        "streamed": n % 2 == 0,
        "cut": False,
    }
    values.update(fields)
    return UsageRecord(**values)


class FlakyUsage:
    """The real store behind a switch: ``down`` raises as a dead database does; ``lose_acks``
    commits a batch and then raises, as when the connection drops before the commit's answer
    (the batch is then spooled and stored again: it must not count twice)."""

    def __init__(self, store: UsageStore) -> None:
        self.store = store
        self.down = False
        self.lose_acks = 0
        self.calls = 0

    async def insert_many(self, records: Sequence[UsageRecord]) -> None:
        self.calls += 1
        if self.down:
            raise StoreError("database is down")
        await self.store.insert_many(records)
        if self.lose_acks:
            self.lose_acks -= 1
            raise StoreError("connection lost after COMMIT")


MakeLedger = Callable[..., Ledger]


@pytest.fixture
async def make_ledger(tmp_path: Path) -> AsyncIterator[MakeLedger]:
    made: list[Ledger] = []

    def make(store: Any, **options: Any) -> Ledger:
        config = LedgerConfig(
            spool_path=str(tmp_path / "ledger.spool"),
            flush_interval=options.pop("flush_interval", 60.0),
            queue_size=options.pop("queue_size", 10_000),
            batch_size=options.pop("batch_size", 100),
        )
        ledger = Ledger(store, config)
        made.append(ledger)
        return ledger

    yield make
    for ledger in made:
        await ledger.stop()


async def rows(db: Database) -> list[UsageRecord]:
    import sqlalchemy as sa

    from swarmgate.store.schema import usage_ledger

    async with db.connect() as conn:
        result = await conn.execute(sa.select(*(usage_ledger.c[n] for n in COLUMNS)))
        return sorted((UsageRecord(*row) for row in result), key=lambda r: r.ts)


def test_put_never_awaits_nor_encodes(tmp_path: Path) -> None:
    """No event loop needed: ``put`` appends the tuple as it is."""
    config = LedgerConfig(spool_path=str(tmp_path / "s"))
    ledger = Ledger(UsageStore.__new__(UsageStore), config)
    rec = record(1)
    ledger.put(rec)
    assert ledger.pending == 1 and ledger._queue[0] is rec
    assert ledger.counts()["queued"] == 1


def test_the_codec_round_trips_and_refuses_torn_lines() -> None:
    for rec in (record(1), record(2, key_id=None, model=None, deployment=None, ttft=None)):
        assert CODEC.decode(CODEC.encode(rec)) == rec
    line = CODEC.encode(record(3))
    for bad in (line[: len(line) // 2], b'{"request_id": 5}', b"[]"):
        with pytest.raises((ValueError, TypeError, KeyError)):
            CODEC.decode(bad)


async def test_records_reach_the_store_whole(database: Database, make_ledger: MakeLedger) -> None:
    ledger = make_ledger(UsageStore(database))
    written = [
        record(1),
        record(2, key_id=None, owner="jwt-subject", model=None, deployment=None, ttft=None),
        record(3, status=502, cut=True, streamed=True, tokens_out=3),
        record(4, status=429, tokens_in=0, tokens_out=0, cost=0.0),
    ]
    for rec in written:
        ledger.put(rec)
    await ledger.flush()
    assert await rows(database) == written
    assert ledger.counts() == {
        "queued": 4,
        "written": 4,
        "spooled": 0,
        "replayed": 0,
        "dropped": 0,
    }


async def test_a_record_stored_twice_is_one_row(database: Database) -> None:
    store = UsageStore(database)
    batch = [record(n) for n in range(5)]
    await store.insert_many(batch)
    await store.insert_many([*batch[2:], record(5)])
    assert await store.count() == 6
    # A client may send its own X-Request-ID twice: two requests, two rows.
    await store.insert_many([record(0, ts=batch[0].ts + 1)])
    assert await store.count() == 7
    await store.insert_many([record(9), record(9)])  # twice in one batch
    assert await store.count() == 8


async def test_a_large_batch_goes_in_whole(database: Database) -> None:
    """More rows than one INSERT statement takes: every chunk, and the remainder, stored."""
    store = UsageStore(database)
    await store.insert_many([record(n) for n in range(1234)])
    assert sorted(await store.request_ids()) == sorted(f"req-{n}" for n in range(1234))


async def test_long_values_are_clipped_not_lost(database: Database) -> None:
    store = UsageStore(database)
    await store.insert_many([record(1, owner="o" * 500, tier="t" * 100, model="m" * 300)])
    (row,) = await rows(database)
    assert (len(row.owner), len(row.tier), len(row.model or "")) == (200, 64, 200)


async def test_an_outage_loses_none_and_doubles_none(
    database: Database, make_ledger: MakeLedger, tmp_path: Path
) -> None:
    flaky = FlakyUsage(UsageStore(database))
    ledger = make_ledger(flaky, batch_size=7)
    sent = 0

    def put(count: int) -> None:
        nonlocal sent
        for _ in range(count):
            ledger.put(record(sent))
            sent += 1

    put(20)
    await ledger.flush()  # stored
    flaky.down = True
    put(30)
    await ledger.flush()  # spooled
    put(5)
    await ledger.flush()
    assert (tmp_path / "ledger.spool").exists()
    assert ledger.counts()["spooled"] == 35
    flaky.down = False
    flaky.lose_acks = 2  # two batches committed whose answer never came back
    put(10)
    await ledger.flush()  # the first replay attempt: one batch in, then "lost"
    await ledger.flush()
    await ledger.flush()
    stored = await rows(database)
    assert [r.request_id for r in stored] == [f"req-{n}" for n in range(sent)]
    assert ledger.counts()["dropped"] == 0
    assert not (tmp_path / "ledger.spool").exists()


async def test_stop_stores_what_is_queued(database: Database, tmp_path: Path) -> None:
    config = LedgerConfig(spool_path=str(tmp_path / "s"), flush_interval=60.0)
    ledger = Ledger(UsageStore(database), config)
    await ledger.start()
    for n in range(250):
        ledger.put(record(n))
    await asyncio.sleep(0)
    await ledger.stop()
    assert await UsageStore(database).count() == 250


async def test_the_writer_flushes_every_interval(database: Database, tmp_path: Path) -> None:
    config = LedgerConfig(spool_path=str(tmp_path / "s"), flush_interval=0.05)
    ledger = Ledger(UsageStore(database), config)
    await ledger.start()
    try:
        ledger.put(record(1))
        store = UsageStore(database)
        for _ in range(200):
            if await store.count() == 1:
                break
            await asyncio.sleep(0.02)
        assert await store.count() == 1
    finally:
        await ledger.stop()
