"""The write-behind mechanism on its own: any record type, any sink, a real spool on disk.

The records here are ``Reading``s (a name and a number), not audit records: nothing in
``store.writebehind`` may depend on what it carries. The replay lock is taken by a real second
process, as a second worker of a gateway would take it.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from swarmgate.errors import StoreError
from swarmgate.store.sql import Database
from swarmgate.store.writebehind import Codec, WriteBehind


@dataclass(frozen=True)
class Reading:
    name: str
    value: int


def _encode(r: Reading) -> bytes:
    return orjson.dumps([r.name, r.value])


def _decode(line: bytes) -> Reading:
    name, value = orjson.loads(line)
    if not isinstance(name, str) or not isinstance(value, int):
        raise ValueError("not a reading")
    return Reading(name, value)


CODEC = Codec(_encode, _decode)


class Sink:
    """Stores batches in memory; ``down`` makes it fail like a database that is unreachable."""

    def __init__(self) -> None:
        self.batches: list[list[Reading]] = []
        self.down = False

    async def __call__(self, records: Sequence[Reading]) -> None:
        await asyncio.sleep(0)
        if self.down:
            raise StoreError("down")
        self.batches.append(list(records))

    @property
    def values(self) -> list[int]:
        return [r.value for batch in self.batches for r in batch]


Make = Callable[..., WriteBehind[Reading]]


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    return tmp_path / "spool" / "readings.jsonl"


@pytest.fixture
async def make(spool: Path) -> AsyncIterator[Make]:
    made: list[WriteBehind[Reading]] = []

    def build(sink: Any, **options: Any) -> WriteBehind[Reading]:
        options.setdefault("flush_interval", 3600.0)
        options.setdefault("queue_size", 10_000)
        writer = WriteBehind(sink, CODEC, spool, what="readings", **options)
        made.append(writer)
        return writer

    yield build
    for writer in made:
        await writer.stop()


def spooled(spool: Path) -> list[bytes]:
    files = [spool, spool.with_name(spool.name + ".replay")]
    return [line for f in files if f.exists() for line in f.read_bytes().splitlines()]


async def test_put_never_awaits_and_flush_stores_in_batches_in_order(make: Make) -> None:
    sink = Sink()
    writer = make(sink, batch_size=3)
    for i in range(7):
        writer.put(Reading("t", i))
    assert sink.batches == [] and writer.pending == 7
    await writer.flush()
    assert [len(b) for b in sink.batches] == [3, 3, 1]
    assert sink.values == list(range(7)) and writer.pending == 0


async def test_the_spool_holds_the_codecs_lines_and_is_replayed_first(
    make: Make, spool: Path
) -> None:
    sink = Sink()
    sink.down = True
    writer = make(sink, batch_size=2)
    for i in range(3):
        writer.put(Reading("old", i))
    await writer.flush()
    assert spooled(spool) == [b'["old",0]', b'["old",1]', b'["old",2]']

    sink.down = False
    writer.put(Reading("new", 3))
    await writer.flush()
    assert sink.values == [0, 1, 2, 3]  # the spool (older) before the queue
    assert spooled(spool) == []
    assert sorted(p.name for p in spool.parent.iterdir()) == [
        "readings.jsonl.append.lock",
        "readings.jsonl.lock",
    ]


async def test_a_restarted_writer_replays_what_an_earlier_one_spooled(
    make: Make, spool: Path
) -> None:
    down = Sink()
    down.down = True
    first = make(down)
    first.put(Reading("a", 1))
    await first.stop()  # a graceful shutdown while the store is down
    sink = Sink()
    await make(sink).flush()  # the next process
    assert sink.values == [1]


async def test_corrupt_lines_are_skipped_and_named_by_the_writer(
    make: Make, spool: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool.parent.mkdir(parents=True)
    spool.write_bytes(b'["a",1]\n{"not": "a reading"}\n["b","x"]\n["c",3]\n["torn"')
    sink = Sink()
    with caplog.at_level(logging.ERROR):
        await make(sink).flush()
    assert sink.values == [1, 3]
    assert caplog.text.count("readings spool") == 3
    assert spooled(spool) == []


async def test_memory_is_bounded_and_nothing_is_lost(make: Make, spool: Path) -> None:
    sink = Sink()
    writer = make(sink, queue_size=4)
    for i in range(100):
        writer.put(Reading("m", i))
        assert writer.pending <= 4
    assert len(spooled(spool)) + writer.pending == 100
    await writer.flush()
    assert sink.values == list(range(100)) and writer.dropped == 0


async def test_an_unwritable_spool_counts_what_it_drops_and_put_never_raises(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the spool directory should be")
    sink = Sink()
    sink.down = True
    writer = WriteBehind(
        sink, CODEC, blocker / "spool", what="readings", flush_interval=3600.0, queue_size=2
    )
    for i in range(5):
        writer.put(Reading("x", i))
    assert writer.dropped == 3  # each put beyond the bound spills the oldest, and cannot
    await writer.flush()  # the store is down and the spool unwritable: kept in memory
    assert writer.pending == 2
    sink.down = False
    await writer.flush()
    assert sink.values == [3, 4]


async def test_the_background_writer_flushes_on_its_interval(make: Make) -> None:
    sink = Sink()
    writer = make(sink, flush_interval=0.05)
    await writer.start()
    writer.put(Reading("tick", 1))
    async with asyncio.timeout(5):
        while not sink.batches:
            await asyncio.sleep(0.01)
    assert sink.values == [1]


async def test_another_process_replaying_the_spool_is_left_alone(make: Make, spool: Path) -> None:
    down = Sink()
    down.down = True
    writer = make(down)
    writer.put(Reading("old", 1))
    await writer.flush()
    lock = spool.with_name(spool.name + ".lock")
    with subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys\n"
            f"f = open({str(lock)!r}, 'ab')\n"
            "fcntl.flock(f.fileno(), fcntl.LOCK_EX)\n"
            "print('locked', flush=True)\n"
            "sys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    ) as holder:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        sink = Sink()
        other = make(sink)
        await other.flush()
        assert sink.values == [] and len(spooled(spool)) == 1
        assert holder.stdin is not None
        holder.stdin.close()  # the other process exits, and its lock goes with it
        holder.wait(10)
    await other.flush()
    assert sink.values == [1] and spooled(spool) == []


async def test_with_a_real_sqlite_sink_that_is_down_until_its_directory_exists(
    make: Make, tmp_path: Path
) -> None:
    db_dir = tmp_path / "db"
    db = Database.from_url(f"sqlite:///{db_dir / 'readings.db'}")
    table = sa.table("readings", sa.column("name"), sa.column("value"))

    async def insert(records: Sequence[Reading]) -> None:
        async with db.begin() as conn:
            await conn.execute(
                table.insert(), [{"name": r.name, "value": r.value} for r in records]
            )

    try:
        writer = make(insert)
        writer.put(Reading("a", 1))
        await writer.flush()  # the database cannot even be opened: StoreError, spooled
        assert writer.pending == 0

        db_dir.mkdir()
        async with db.begin() as conn:
            await conn.execute(sa.text("CREATE TABLE readings (name TEXT, value INTEGER)"))
        writer.put(Reading("b", 2))
        await writer.flush()
        async with db.connect() as conn:
            rows = (await conn.execute(sa.text("SELECT name, value FROM readings"))).all()
        assert [tuple(r) for r in rows] == [("a", 1), ("b", 2)]
    finally:
        await db.close()
