"""The ledger's queries: reports per key, owner, model and day or hour; spend since a time;
retention; and the indexes that keep them reading only their range."""

from __future__ import annotations

import sqlalchemy as sa

from swarmgate.store.schema import usage_ledger
from swarmgate.store.sql import Database
from swarmgate.store.usage import UsageFilter, UsageRecord, UsageStore

DAY = 86400.0
T0 = 1_800_000_000.0 - 1_800_000_000.0 % DAY  # midnight UTC


def rec(
    n: int, ts: float, key: str | None, owner: str, model: str | None, **kw: object
) -> UsageRecord:
    values: dict[str, object] = {
        "request_id": f"r{n}",
        "ts": ts,
        "key_id": key,
        "owner": owner,
        "tier": "default",
        "model": model,
        "deployment": "d",
        "route": "/v1/chat/completions",
        "tokens_in": 10,
        "tokens_out": 20,
        "cost": 0.5,
        "latency": 0.2,
        "ttft": None,
        "status": 200,
        "streamed": False,
        "cut": False,
    }
    values.update(kw)
    return UsageRecord(**values)  # type: ignore[arg-type]


LEDGER = [
    rec(1, T0 + 10, "k1", "alice", "m1"),
    rec(2, T0 + 3700, "k1", "alice", "m2", status=429, tokens_in=0, tokens_out=0, cost=0.0),
    rec(3, T0 + 3800, "k2", "alice", "m1", cut=True, status=502, latency=0.4),
    rec(4, T0 + DAY + 5, "k3", "bob", "m1"),
    rec(5, T0 + DAY + 6, None, "jwt-carol", None, status=400, tokens_in=0, tokens_out=0, cost=0),
    rec(6, T0 - 1, "k1", "alice", "m1"),  # the day before: outside the range below
]
RANGE = UsageFilter(T0, T0 + 2 * DAY)


async def stored(db: Database) -> UsageStore:
    store = UsageStore(db)
    await store.insert_many(LEDGER)
    return store


async def test_a_report_per_key_and_day(database: Database) -> None:
    store = await stored(database)
    report = await store.report(RANGE, ["key"], "day")
    by = {(r["bucket"], r["key"]): r for r in report}
    assert set(by) == {
        (int(T0), "k1"),
        (int(T0), "k2"),
        (int(T0 + DAY), "k3"),
        (int(T0 + DAY), None),
    }
    k1 = by[(int(T0), "k1")]
    assert (k1["requests"], k1["errors"], k1["tokens_in"], k1["tokens_out"]) == (2, 1, 10, 20)
    assert k1["cost"] == 0.5
    assert by[(int(T0), "k2")]["cut"] == 1
    assert by[(int(T0), "k2")]["latency_avg"] == 0.4


async def test_hours_owners_models_and_filters(database: Database) -> None:
    store = await stored(database)
    hours = await store.report(RANGE, [], "hour")
    assert [(r["bucket"] - int(T0), r["requests"]) for r in hours] == [
        (0, 1),
        (3600, 2),
        (int(DAY), 2),
    ]
    owners = await store.report(RANGE, ["owner", "model"], None)
    assert {(r["owner"], r["model"]): r["requests"] for r in owners} == {
        ("alice", "m1"): 2,
        ("alice", "m2"): 1,
        ("bob", "m1"): 1,
        ("jwt-carol", None): 1,
    }
    only = UsageFilter(T0, T0 + 2 * DAY, owner="alice", model="m1")
    (row,) = await store.report(only, [], None)
    assert row["requests"] == 2 and row["errors"] == 1
    assert await store.report(UsageFilter(T0, T0 + 2 * DAY, key_id="nobody"), [], None) == [
        {
            "requests": 0,
            "errors": 0,
            "cut": 0,
            "tokens_in": 0,
            "tokens_out": 0,
            "cost": 0.0,
            "latency_avg": 0.0,
        }
    ]


async def test_spend_since_per_key_and_owner(database: Database) -> None:
    store = await stored(database)
    assert await store.spend(T0, "key") == {"k1": 0.5, "k2": 0.5, "k3": 0.5}
    assert await store.spend(T0 - 10, "owner") == {"alice": 1.5, "bob": 0.5, "jwt-carol": 0.0}


async def test_prune_deletes_only_what_ended_before(database: Database) -> None:
    store = await stored(database)
    assert await store.prune(T0 + DAY) == 4
    assert sorted(await store.request_ids()) == ["r4", "r5"]
    assert await store.prune(T0 + DAY) == 0


async def _plan(db: Database, query: sa.Select[object]) -> str:
    compiled = query.compile(db.engine.sync_engine, compile_kwargs={"literal_binds": True})
    async with db.connect() as conn:
        rows = await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}")
        return " | ".join(str(row[-1]) for row in rows)


async def test_reports_read_their_range_through_an_index(tmp_path: object) -> None:
    """On SQLite (the embedded default): no report scans the table."""
    from pathlib import Path

    from swarmgate.store.migrate import migrate

    db = Database.from_url(f"sqlite:///{Path(str(tmp_path)) / 'plan.db'}")
    try:
        await migrate(db)
        store = UsageStore(db)
        # Enough keys, owners and models that the statistics tell them apart, as in use.
        many = [
            rec(n, T0 - 30 * DAY + n * 300, f"k{n % 200}", f"o{n % 50}", f"m{n % 40}")
            for n in range(10, 8640)
        ]
        await store.insert_many([*LEDGER, *many])
        async with db.begin() as conn:
            await conn.exec_driver_sql("ANALYZE")
        # The table is stored in primary key order (time first): a range of it is a range.
        cases = {
            "USING PRIMARY KEY (ts>? AND ts<?)": UsageFilter(T0, T0 + DAY),
            "USING INDEX ix_usage_ledger_key_id_ts (key_id=? AND ts>? AND ts<?)": UsageFilter(
                T0, T0 + DAY, key_id="k1"
            ),
            "USING INDEX ix_usage_ledger_owner_ts (owner=? AND ts>? AND ts<?)": UsageFilter(
                T0, T0 + DAY, owner="alice"
            ),
            "USING PRIMARY KEY (ts>? AND ts<?) ": UsageFilter(T0, T0 + DAY, model="m1"),
        }
        for access, f in cases.items():
            plan = await _plan(db, store.report_query(f, ["key", "model"], "day"))
            assert f"SEARCH usage_ledger {access.strip()}" in plan, plan
            assert "SCAN usage_ledger" not in plan, plan
        spend = sa.select(sa.func.sum(usage_ledger.c.cost)).where(
            usage_ledger.c.owner == "o3", usage_ledger.c.ts >= T0 - DAY
        )
        assert "USING INDEX ix_usage_ledger_owner_ts" in await _plan(db, spend)
    finally:
        await db.close()
