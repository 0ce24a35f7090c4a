"""The SQL seam: URL normalisation, SQLite settings, and errors translated into StoreError."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from swarmgate.errors import ConfigError, StoreError
from swarmgate.store.keys import KeyStore
from swarmgate.store.migrate import migrate
from swarmgate.store.sql import Database, _use_wal, normalize_url
from tests.plugins.servers import PostgresServer, free_port


@pytest.mark.parametrize(
    ("url", "driver"),
    [
        ("sqlite:///gate.db", "sqlite+aiosqlite"),
        ("sqlite+aiosqlite:///gate.db", "sqlite+aiosqlite"),
        ("sqlite://", "sqlite+aiosqlite"),
        ("postgresql://u:p@db/gate", "postgresql+psycopg"),
        ("postgres://u@db/gate", "postgresql+psycopg"),
        ("postgresql+psycopg://u@db:5433/gate", "postgresql+psycopg"),
    ],
)
def test_urls_are_normalised_to_the_async_drivers(url: str, driver: str) -> None:
    parsed = normalize_url(url)
    assert parsed.drivername == driver
    assert parsed.database == sa.make_url(url).database


@pytest.mark.parametrize(
    "url",
    ["mysql://u@db/gate", "postgresql+asyncpg://u@db/x", "nonsense", "postgresql://u:p@h:x/d"],
)
def test_unsupported_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError):
        normalize_url(url)


async def test_password_is_masked_in_the_url() -> None:
    db = Database.from_url("postgresql://gate:hunter2@127.0.0.1/gate")
    try:
        assert "hunter2" not in db.url
        assert "hunter2" not in repr(db)
        assert db.dialect == "postgresql"
    finally:
        await db.close()


async def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    db = Database.from_url(f"sqlite:///{tmp_path / 'gate.db'}")
    try:
        async with db.connect() as conn:
            assert await conn.scalar(sa.text("PRAGMA journal_mode")) == "wal"
            assert await conn.scalar(sa.text("PRAGMA foreign_keys")) == 1
            assert await conn.scalar(sa.text("PRAGMA busy_timeout")) == 5000
    finally:
        await db.close()


def test_many_connections_switch_a_new_file_to_wal_together(tmp_path: Path) -> None:
    # Without the retry in _use_wal about one file in fifteen fails here with
    # "database is locked": SQLite does not wait on the busy timeout for this switch.
    failures: list[str] = []

    def connect(path: Path, barrier: threading.Barrier) -> None:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout=5000")
            barrier.wait()
            _use_wal(conn.cursor())
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("CREATE TABLE IF NOT EXISTS t (x)")
            conn.execute("COMMIT")
            assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        except sqlite3.OperationalError as exc:
            failures.append(str(exc))
        finally:
            conn.close()

    for i in range(50):
        barrier = threading.Barrier(6)
        threads = [
            threading.Thread(target=connect, args=(tmp_path / f"{i}.db", barrier)) for _ in range(6)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert failures == []


async def test_a_failed_write_transaction_is_rolled_back(database: Database) -> None:
    table = sa.table("ip_blocks", sa.column("cidr"), sa.column("reason"))
    with pytest.raises(RuntimeError):
        async with database.begin() as conn:
            await conn.execute(
                sa.text(
                    "INSERT INTO ip_blocks (cidr, reason, created_at, created_by) "
                    "VALUES ('10.0.0.0/8', 'x', 1, 'test')"
                )
            )
            raise RuntimeError("boom")
    async with database.connect() as conn:
        assert await conn.scalar(sa.select(sa.func.count()).select_from(table)) == 0


async def test_driver_errors_become_store_errors(database: Database) -> None:
    with pytest.raises(StoreError) as caught:
        async with database.connect() as conn:
            await conn.execute(sa.text("SELECT * FROM no_such_table"))
    assert isinstance(caught.value.__cause__, sa.exc.DBAPIError)


async def test_sqlite_in_a_missing_directory_is_a_store_error(tmp_path: Path) -> None:
    threads_before = set(threading.enumerate())
    db = Database.from_url(f"sqlite:///{tmp_path / 'missing' / 'gate.db'}")
    try:
        assert await db.ping() is False
        with pytest.raises(StoreError):
            await KeyStore(db).count()
    finally:
        await db.close()
        # aiosqlite does not wait for the worker thread of a failed connect to stop
        # (omnilib/aiosqlite#241); if the loop closes first, that thread raises.
        for thread in set(threading.enumerate()) - threads_before:
            thread.join(timeout=5)


async def test_nothing_listening_is_a_store_error() -> None:
    db = Database.from_url(f"postgresql://postgres@127.0.0.1:{free_port()}/gate")
    try:
        assert await db.ping() is False
        with pytest.raises(StoreError, match="database error"):
            await migrate(db)
    finally:
        await db.close()


async def test_a_stopped_postgres_is_a_store_error() -> None:
    server = PostgresServer()
    try:
        server.start()
        db = Database.from_url(server.url(server.create_database()), connect_timeout=2)
        try:
            await migrate(db)
            keys = KeyStore(db)
            assert await keys.count() == 0
            assert await db.ping() is True
            server.stop()
            assert await db.ping() is False
            with pytest.raises(StoreError):
                await keys.count()
        finally:
            await db.close()
    finally:
        server.stop()
