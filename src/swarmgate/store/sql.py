"""The SQL seam: one ``Database`` over SQLAlchemy 2 async Core, SQLite or PostgreSQL by URL.

Everything that talks to the SQL store goes through ``Database.begin()`` (a write transaction)
or ``Database.connect()`` (reads). Those two context managers are the only place where
SQLAlchemy and driver errors are translated into ``StoreError``, so callers never see a driver
exception.

SQLite runs in WAL mode with a busy timeout and foreign keys on. Its driver's own transaction
handling is switched off (SQLAlchemy's documented recipe) so that we emit ``BEGIN`` ourselves:
DDL becomes transactional (a failed migration leaves nothing half-done) and write transactions
start with ``BEGIN IMMEDIATE``, which makes concurrent writers, even in other processes, wait
for the lock (up to the busy timeout) instead of failing mid-transaction.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from swarmgate.errors import ConfigError, StoreError

Dialect = Literal["sqlite", "postgresql"]

_SQLITE_BUSY_TIMEOUT_MS = 5000
_WAL_ATTEMPTS = 20
# Execution option that marks a connection as a writer (BEGIN IMMEDIATE on SQLite).
_WRITE = "swarmgate_write"
_TRANSLATED = (sa_exc.DBAPIError, sa_exc.TimeoutError, sa_exc.DisconnectionError)


def normalize_url(url: str) -> URL:
    """Map the URLs operators write to the async drivers we ship: aiosqlite and psycopg 3."""
    try:
        parsed = make_url(url)
    except (sa_exc.ArgumentError, ValueError):
        # Not chained: the parser's message repeats the URL, password included.
        raise ConfigError(["store.url: not a database URL"]) from None
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "sqlite" and driver in ("", "aiosqlite", "pysqlite"):
        return parsed.set(drivername="sqlite+aiosqlite")
    if backend in ("postgresql", "postgres") and driver in ("", "psycopg", "psycopg_async"):
        return parsed.set(drivername="postgresql+psycopg")
    raise ConfigError(
        [
            f"store.url: unsupported database {parsed.drivername!r}; "
            "use sqlite:///path.db or postgresql://user@host/db"
        ]
    )


def _describe(exc: BaseException) -> str:
    # The driver's own message, without SQLAlchemy's statement and parameter dump.
    orig = getattr(exc, "orig", None) or exc
    first_line = str(orig).strip().splitlines()[0] if str(orig).strip() else ""
    return f"{type(orig).__name__}: {first_line}" if first_line else type(orig).__name__


def _use_wal(cursor: Any) -> None:
    # Switching a new file to WAL takes an exclusive lock, and when several connections (or
    # processes) switch at once SQLite may answer "database is locked" without calling the busy
    # handler (it refuses to wait where waiting could deadlock). It happens at most once per
    # file, at first start, so a short blocking retry is the simplest correct answer.
    for attempt in range(_WAL_ATTEMPTS):
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError:
            if attempt == _WAL_ATTEMPTS - 1:
                raise
            time.sleep(0.005 * (attempt + 1))


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves, see _on_begin
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_TIMEOUT_MS}")
            _use_wal(cursor)
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        # A deferred transaction that reads and then writes can fail with SQLITE_BUSY at once
        # (no waiting) if another writer got in between; writers therefore take the lock first.
        writer = connection.get_execution_options().get(_WRITE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")


class Database:
    """An async engine plus error translation. Build it once and pass it down."""

    def __init__(self, engine: AsyncEngine) -> None:
        name = engine.dialect.name
        if name not in ("sqlite", "postgresql"):
            raise ConfigError([f"store.url: unsupported database {name!r}"])
        self._engine = engine
        self._dialect: Dialect = "sqlite" if name == "sqlite" else "postgresql"

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        connect_timeout: float = 5.0,
        pool_size: int = 10,
        max_overflow: int = 10,
        pool_timeout: float = 10.0,
        prepared_statements: bool = False,
    ) -> Database:
        """``sqlite:///file.db``, ``sqlite+aiosqlite://...``, ``postgresql://...`` or
        ``postgresql+psycopg://...``. ``connect_timeout`` bounds a PostgreSQL connect; the
        pool's figures and ``prepared_statements`` are ``config.Store``'s (PostgreSQL only)."""
        parsed = normalize_url(url)
        kwargs: dict[str, Any] = {}
        if parsed.drivername.startswith("sqlite"):
            if parsed.database in (None, "", ":memory:"):
                # One shared connection, or every pooled connection sees its own empty database.
                kwargs["poolclass"] = StaticPool
            engine = create_async_engine(parsed, **kwargs)
            _configure_sqlite(engine)
        else:
            connect_args: dict[str, Any] = {"connect_timeout": max(1, round(connect_timeout))}
            if not prepared_statements:
                # psycopg's switch for "never prepare" (pgbouncer in transaction mode).
                connect_args["prepare_threshold"] = None
            engine = create_async_engine(
                parsed,
                pool_size=pool_size,
                max_overflow=max_overflow,
                pool_timeout=pool_timeout,
                pool_pre_ping=True,  # survive a database restart without failing a request
                connect_args=connect_args,
            )
        return cls(engine)

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    @property
    def dialect(self) -> Dialect:
        return self._dialect

    @property
    def url(self) -> str:
        """The URL with any password masked, for logs and status pages."""
        return self._engine.url.render_as_string(hide_password=True)

    def __repr__(self) -> str:
        return f"Database({self.url!r})"

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction: committed on success, rolled back on any exception."""
        try:
            async with self._engine.connect() as conn:
                await conn.execution_options(**{_WRITE: True})
                async with conn.begin():
                    yield conn
        except _TRANSLATED as exc:
            raise StoreError(f"database error: {_describe(exc)}") from exc

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads; anything left uncommitted is rolled back on exit."""
        try:
            async with self._engine.connect() as conn:
                yield conn
        except _TRANSLATED as exc:
            raise StoreError(f"database error: {_describe(exc)}") from exc

    async def ping(self) -> bool:
        """True when the database answers a trivial query (for readiness checks)."""
        try:
            async with self.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))
        except StoreError:
            return False
        return True

    async def close(self) -> None:
        await self._engine.dispose()
