"""The usage ledger's writer and report, in process (issue 13, Performance: Ledger).

1. **Writer at 5,000 records/s**: a producer puts generated ``UsageRecord``s on a
   ``limits.ledger.Ledger`` at a steady rate (50 every 10 ms) for ``--seconds``, as
   ``Accounting.finish`` would; the writer flushes them in batches (every 1 s, the default, or
   as soon as a batch is full). Reported: records/s stored, the most records ever waiting in
   memory (the bound), the RSS growth, and how long the last records took to drain after the
   producer stopped. "Keeps up" = the queue never spilled to the spool and drained at once.
2. **Spool replay**: ``--spool-records`` records go to the spool while the store is "down"
   (a sink that raises ``StoreError``), then the store comes back and one flush replays them:
   records/s replayed.
3. **Report at a million rows** (SQLite): ``--rows`` generated rows over 30 days, 1,000 keys,
   100 owners, 8 models; then the report per key and day over the 30 days, per model and hour
   over one day, and one key's usage per day, each timed (median of 3).

Both engines: SQLite in a temporary file, PostgreSQL on a throwaway server started here (the
tests' ``PostgresServer``, Debian's postgresql-15) unless ``--postgres URL`` is given, or
skipped with ``--no-postgres``.

Run: ``.venv/bin/python bench/ledger_bench.py [--seconds 5] [--rows 1000000]``
(``--quick``: 2 s, 100,000 rows).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "src"), str(REPO)]

from swarmgate.config import Ledger as LedgerConfig  # noqa: E402
from swarmgate.errors import StoreError  # noqa: E402
from swarmgate.limits.ledger import Ledger  # noqa: E402
from swarmgate.store.migrate import migrate  # noqa: E402
from swarmgate.store.sql import Database  # noqa: E402
from swarmgate.store.usage import COLUMNS, UsageFilter, UsageRecord, UsageStore  # noqa: E402

RATE = 5000  # records per second
TICK = 0.01  # the producer puts RATE * TICK records every TICK seconds
DAY = 86400.0


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def generated(
    n: int, now: float, spread: float = 0.0, rng: random.Random | None = None
) -> UsageRecord:
    r = rng or random
    return UsageRecord(
        request_id=f"bench-{n}",
        ts=now - (r.random() * spread if spread else 0.0),
        key_id=f"key_{n % 1000:016x}",
        owner=f"owner{n % 100}",
        tier="pro",
        model=f"model-{n % 8}",
        deployment=f"dep-{n % 16}",
        route="/v1/chat/completions",
        tokens_in=100 + n % 50,
        tokens_out=20 + n % 30,
        cost=0.001,
        latency=0.05,
        ttft=0.01 if n % 2 else None,
        status=200 if n % 50 else 429,
        streamed=bool(n % 2),
        cut=False,
    )


class Timed:
    """The store, with the time spent storing batches: the writer's capacity."""

    def __init__(self, store: UsageStore) -> None:
        self.store, self.busy = store, 0.0

    async def insert_many(self, records: Sequence[UsageRecord]) -> None:
        start = time.perf_counter()
        await self.store.insert_many(records)
        self.busy += time.perf_counter() - start


async def writer(db: Database, spool: Path, seconds: float) -> dict[str, Any]:
    timed = Timed(UsageStore(db))
    ledger = Ledger(timed, LedgerConfig(spool_path=str(spool)))
    await ledger.start()
    per_tick = int(RATE * TICK)
    start = time.perf_counter()
    rss0, max_pending, n = rss_mb(), 0, 0
    next_tick = start
    while time.perf_counter() - start < seconds:
        wall = time.time()
        for _ in range(per_tick):
            ledger.put(generated(n, wall))
            n += 1
        max_pending = max(max_pending, ledger.pending)
        next_tick += TICK
        await asyncio.sleep(max(0.0, next_tick - time.perf_counter()))
    produced_for = time.perf_counter() - start
    stopped = time.perf_counter()
    while ledger.written < n and time.perf_counter() - stopped < 30:
        await asyncio.sleep(0.01)
    drained = time.perf_counter() - stopped
    elapsed = time.perf_counter() - start
    counts = ledger.counts()
    rss1 = rss_mb()
    await ledger.stop()
    return {
        "records": n,
        "offered_per_s": n / produced_for,
        "stored_per_s": counts["written"] / elapsed,
        "capacity_per_s": counts["written"] / timed.busy if timed.busy else 0.0,
        "max_pending": max_pending,
        "spooled": counts["spooled"],
        "dropped": counts["dropped"],
        "drain_s": drained,
        "rss_growth_mb": rss1 - rss0,
    }


class Switch:
    def __init__(self, store: UsageStore) -> None:
        self.store, self.down = store, True

    async def insert_many(self, records: Sequence[UsageRecord]) -> None:
        if self.down:
            raise StoreError("down (bench)")
        await self.store.insert_many(records)


async def replay(db: Database, spool: Path, count: int) -> dict[str, Any]:
    switch = Switch(UsageStore(db))
    config = LedgerConfig(spool_path=str(spool), queue_size=count + 1)
    ledger = Ledger(switch, config)
    wall = time.time()
    for n in range(count):
        ledger.put(generated(10_000_000 + n, wall))
    await ledger.flush()  # all spooled
    switch.down = False
    start = time.perf_counter()
    await ledger.flush()
    seconds = time.perf_counter() - start
    return {
        "records": count,
        "replayed": ledger.replayed,
        "replay_per_s": ledger.replayed / seconds,
    }


def fill(path: Path, rows: int) -> float:
    """``rows`` generated rows over the 30 days to now, straight through sqlite3 (setup, not
    measured), in about the order they ended, as a gateway writes them (within 10 s)."""
    rng = random.Random(13)
    now = time.time()
    start = time.perf_counter()
    marks = ",".join("?" * len(COLUMNS))
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA synchronous=OFF")
        for first in range(0, rows, 50_000):
            batch = [
                tuple(generated(n, now - 30 * DAY * (1 - n / rows), 10.0, rng))
                for n in range(first, min(rows, first + 50_000))
            ]
            conn.executemany(
                f"INSERT INTO usage_ledger ({', '.join(COLUMNS)}) VALUES ({marks})", batch
            )
        conn.execute("ANALYZE")
    return time.perf_counter() - start


async def reports(db: Database) -> dict[str, float]:
    store = UsageStore(db)
    now = time.time()
    cases: dict[str, tuple[UsageFilter, list[str], Any]] = {
        "per key and day, 30 days": (UsageFilter(now - 30 * DAY, now), ["key"], "day"),
        "per model and hour, 1 day": (UsageFilter(now - DAY, now), ["model"], "hour"),
        "one key per day, 30 days": (
            UsageFilter(now - 30 * DAY, now, key_id=f"key_{7:016x}"),
            [],
            "day",
        ),
        "one owner per model, 30 days": (
            UsageFilter(now - 30 * DAY, now, owner="owner7"),
            ["model"],
            None,
        ),
    }
    out = {}
    for name, (f, groups, bucket) in cases.items():
        times = []
        for _ in range(3):
            start = time.perf_counter()
            await store.report(f, groups, bucket)
            times.append(time.perf_counter() - start)
        out[name] = statistics.median(times)
    return out


async def engine(name: str, url: str, spool_dir: Path, args: argparse.Namespace) -> None:
    db = Database.from_url(url)
    try:
        await migrate(db)
        w = await writer(db, spool_dir / f"{name}-writer.spool", args.seconds)
        print(
            f"{name}: writer offered {w['offered_per_s']:,.0f}/s, stored all {w['records']:,}"
            f" (insert capacity {w['capacity_per_s']:,.0f} records/s);"
            f" at most {w['max_pending']:,} waiting in memory,"
            f" RSS +{w['rss_growth_mb']:.1f} MB, drained {w['drain_s']:.2f} s after the last;"
            f" spooled {w['spooled']}, dropped {w['dropped']}"
        )
        r = await replay(db, spool_dir / f"{name}-replay.spool", args.spool_records)
        print(f"{name}: spool replay {r['replay_per_s']:,.0f} records/s ({r['replayed']:,})")
    finally:
        await db.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--spool-records", type=int, default=50_000)
    parser.add_argument("--postgres", default=None, help="a PostgreSQL URL (default: start one)")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--quick", action="store_true", help="2 s, 100,000 rows, 20,000 spooled")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rows, args.spool_records = 2.0, 100_000, 20_000
    with tempfile.TemporaryDirectory(prefix="ledger-bench-") as tmp:
        work = Path(tmp)
        await engine("sqlite", f"sqlite:///{work / 'writer.db'}", work, args)
        if not args.no_postgres:
            server = None
            url = args.postgres
            if url is None:
                from tests.plugins.servers import PostgresServer

                server = PostgresServer().start()
                url = server.url(server.create_database())
            try:
                await engine("postgresql", url, work, args)
            finally:
                if server is not None:
                    server.stop()
        db_path = work / "report.db"
        db = Database.from_url(f"sqlite:///{db_path}")
        try:
            await migrate(db)
            filled = fill(db_path, args.rows)
            print(f"sqlite: {args.rows:,} rows generated in {filled:.1f} s; reports (median of 3):")
            for name, seconds in (await reports(db)).items():
                print(f"  {name}: {seconds * 1000:,.0f} ms")
        finally:
            await db.close()


if __name__ == "__main__":
    asyncio.run(main())
