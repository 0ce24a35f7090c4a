"""Migrations: head matches schema.py exactly, upgrading is idempotent and safe to race."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection

from swarmgate.store.migrate import alembic_config, current_revision, head_revision, migrate
from swarmgate.store.schema import metadata
from swarmgate.store.sql import Database
from swarmgate.store.usage import UsageStore


def _diffs(target: sa.MetaData) -> Any:
    def run(connection: Connection) -> Any:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, target)

    return run


async def _tables(db: Database) -> set[str]:
    async with db.connect() as conn:
        names = await conn.run_sync(lambda c: sa.inspect(c).get_table_names())
    return set(names) - {"alembic_version"}


async def test_head_creates_exactly_the_declared_schema(database: Database) -> None:
    async with database.connect() as conn:
        assert await conn.run_sync(_diffs(metadata)) == []


async def test_the_comparison_notices_a_difference(database: Database) -> None:
    changed = sa.MetaData()
    for table in metadata.tables.values():
        table.to_metadata(changed)
    sa.Table("api_keys", changed, sa.Column("note", sa.String(10)), extend_existing=True)
    async with database.connect() as conn:
        diffs = await conn.run_sync(_diffs(changed))
    assert [d[0] for d in diffs] == ["add_column"]


async def test_migrating_twice_changes_nothing(database_url: str) -> None:
    db = Database.from_url(database_url)
    try:
        assert await current_revision(db) is None
        assert await _tables(db) == set()
        await migrate(db)
        assert await current_revision(db) == head_revision() == "0008"
        assert await _tables(db) == set(metadata.tables)
        await migrate(db)
        assert await current_revision(db) == "0008"
    finally:
        await db.close()


async def test_concurrent_migrations_wait_for_each_other(database_url: str) -> None:
    # Separate engines, as separate processes would have: each its own connections.
    dbs = [Database.from_url(database_url) for _ in range(4)]
    try:
        await asyncio.gather(*(migrate(db) for db in dbs))
        assert await current_revision(dbs[0]) == head_revision()
        assert await _tables(dbs[0]) == set(metadata.tables)
    finally:
        for db in dbs:
            await db.close()


async def test_downgrade_removes_everything(database: Database) -> None:
    def downgrade(connection: Connection) -> None:
        command.downgrade(alembic_config(connection), "base")

    async with database.begin() as conn:
        await conn.run_sync(downgrade)
    assert await _tables(database) == set()
    assert await current_revision(database) is None


async def test_a_database_at_0001_upgrades_to_head_keeping_its_rows(database_url: str) -> None:
    def to_0001(connection: Connection) -> None:
        command.upgrade(alembic_config(connection), "0001")

    db = Database.from_url(database_url)
    try:
        async with db.begin() as conn:
            await conn.run_sync(to_0001)
            await conn.execute(
                sa.text(
                    "INSERT INTO ip_blocks (cidr, reason, created_at, created_by) "
                    "VALUES ('192.0.2.0/24', 'r', 1.0, 'op')"
                )
            )
        assert "model_downloads" not in await _tables(db)
        await migrate(db)
        assert await current_revision(db) == "0008"
        assert await _tables(db) == set(metadata.tables)
        async with db.connect() as conn:
            count = (await conn.execute(sa.text("SELECT count(*) FROM ip_blocks"))).scalar()
        assert count == 1
    finally:
        await db.close()


async def test_the_ledger_keeps_its_rows_through_0006_and_back(database_url: str) -> None:
    def to(revision: str) -> Callable[[Connection], None]:
        def run(connection: Connection) -> None:
            command.upgrade(alembic_config(connection), revision)

        return run

    def down_to(revision: str) -> Callable[[Connection], None]:
        def run(connection: Connection) -> None:
            command.downgrade(alembic_config(connection), revision)

        return run

    columns = (
        "request_id, ts, key_id, owner, tier, model, deployment, route, tokens_in, tokens_out,"
        " cost, latency, ttft, status, streamed, cut"
    )
    row = "'{rid}', {ts}, 'k', 'o', 't', 'm', 'd', '/v1/chat/completions', 1, 2, 0.5, 0.1, NULL,"
    row += " 200, false, false"
    db = Database.from_url(database_url)
    try:
        async with db.begin() as conn:
            await conn.run_sync(to("0005"))
            for n in range(3):
                values = row.format(rid=f"r{n}", ts=1000.0 - n)
                await conn.execute(
                    sa.text(f"INSERT INTO usage_ledger ({columns}) VALUES ({values})")
                )
        await migrate(db)
        store = UsageStore(db)
        assert sorted(await store.request_ids()) == ["r0", "r1", "r2"]
        async with db.begin() as conn:
            await conn.run_sync(down_to("0005"))
        async with db.connect() as conn:
            count = (await conn.execute(sa.text("SELECT count(*) FROM usage_ledger"))).scalar()
        assert count == 3
        await migrate(db)
        assert await current_revision(db) == head_revision()
    finally:
        await db.close()
