"""Real PostgreSQL and Redis servers for the tests, started from Debian's binaries.

Fixtures:
    postgres_server   (session)  a PostgreSQL 15 cluster on 127.0.0.1:<free port>, trust auth
    postgres_url      (function) a fresh database on it: ``postgresql+psycopg://...``, dropped after
    redis_server      (session)  redis-server on 127.0.0.1:<free port>, no persistence
    redis_url         (function) ``redis://127.0.0.1:<port>/0``, flushed before each test
    database          (function) a migrated ``Database``, parametrized over sqlite and postgresql

``PostgresServer`` and ``RedisServer`` can also be started directly by a test that needs a server
of its own (for example one it kills). A missing binary fails the test with the apt package to
install: these are real dependencies, never skipped.

PostgreSQL refuses to run as root, so when the tests run as root the cluster is created and run as
the ``postgres`` system user, in a directory under /tmp that user can reach.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import pytest_asyncio
import redis
from psycopg import sql

from swarmgate.store.migrate import migrate
from swarmgate.store.sql import Database

PG_BIN = Path(os.environ.get("SWARMGATE_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
REDIS_BIN = Path(shutil.which("redis-server") or "/usr/bin/redis-server")
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _require(binary: Path, package: str) -> None:
    if not os.access(binary, os.X_OK):
        pytest.fail(
            f"{binary} not found: install it with `apt-get install {package}` "
            "(the tests use a real server, they are never skipped)",
            pytrace=False,
        )


def _stop(proc: subprocess.Popen[bytes], sig: int, timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class PostgresServer:
    """A throwaway PostgreSQL cluster: ``initdb``, ``postgres`` in the foreground, then removed."""

    def __init__(self) -> None:
        _require(PG_BIN / "postgres", "postgresql-15")
        _require(PG_BIN / "initdb", "postgresql-15")
        self.port = free_port()
        self.host = "127.0.0.1"
        self.user = "postgres"
        self._proc: subprocess.Popen[bytes] | None = None
        self._root = Path(tempfile.mkdtemp(prefix="swarmgate-pg-"))
        self._run_as: dict[str, Any] = {}
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            os.chown(self._root, account.pw_uid, account.pw_gid)
            self._run_as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        self._data = self._root / "data"
        self._log = self._root / "postgres.log"

    def _run(self, *args: str) -> None:
        result = subprocess.run(
            args, cwd=self._root, capture_output=True, check=False, **self._run_as
        )
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {result.stderr.decode(errors='replace')}")

    def start(self) -> PostgresServer:
        self._run(
            str(PG_BIN / "initdb"),
            "-D",
            str(self._data),
            "-U",
            self.user,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        return self.resume()

    def resume(self) -> PostgresServer:
        """Run the server on its port and data directory: after ``start``, or after ``halt``."""
        log = self._log.open("ab")
        # Durability settings off: a test cluster is thrown away, speed matters.
        self._proc = subprocess.Popen(
            [
                str(PG_BIN / "postgres"),
                "-D",
                str(self._data),
                "-p",
                str(self.port),
                "-k",
                str(self._root),
                "-c",
                f"listen_addresses={self.host}",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
            ],
            cwd=self._root,
            stdout=log,
            stderr=subprocess.STDOUT,
            **self._run_as,
        )
        log.close()
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(f"postgres exited at start:\n{self._log.read_text()}")
            try:
                with psycopg.connect(self.dsn("postgres"), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"postgres not ready in {START_TIMEOUT}s:\n{self._log.read_text()}"
                    ) from None
                time.sleep(0.05)

    def dsn(self, dbname: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname}"

    def url(self, dbname: str) -> str:
        """A SQLAlchemy URL for swarmgate's ``Database.from_url``."""
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{dbname}"

    def create_database(self) -> str:
        name = "t_" + uuid.uuid4().hex[:16]
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            # FILE_COPY (PostgreSQL 15+) is several times faster than the default for tiny
            # databases, and this runs once per test.
            strategy = " STRATEGY FILE_COPY" if conn.info.server_version >= 150000 else ""
            conn.execute(sql.SQL("CREATE DATABASE {}" + strategy).format(sql.Identifier(name)))
        return name

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def halt(self) -> None:
        """Stop the server as an outage would (fast shutdown: sessions are ended), keeping its
        files so that ``resume`` brings it back with its data."""
        if self._proc is not None:
            _stop(self._proc, signal.SIGINT)
            self._proc = None

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove its files."""
        if self._proc is not None:
            _stop(self._proc, signal.SIGINT)  # PostgreSQL's "fast" shutdown
            self._proc = None
        shutil.rmtree(self._root, ignore_errors=True)


class RedisServer:
    """A redis-server on a free port with persistence off."""

    def __init__(self) -> None:
        _require(REDIS_BIN, "redis-server")
        self.port = free_port()
        self.host = "127.0.0.1"
        self._proc: subprocess.Popen[bytes] | None = None
        self._root = Path(tempfile.mkdtemp(prefix="swarmgate-redis-"))

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> RedisServer:
        self._proc = subprocess.Popen(
            [
                str(REDIS_BIN),
                "--port",
                str(self.port),
                "--bind",
                self.host,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self._root),
            ],
            cwd=self._root,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"redis-server exited at start (code {self._proc.returncode})")
            try:
                with redis.Redis(host=self.host, port=self.port, socket_timeout=2) as client:
                    client.ping()
                    return self
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server not ready in {START_TIMEOUT}s") from None
                time.sleep(0.02)

    @contextlib.contextmanager
    def hung(self) -> Iterator[None]:
        """The server frozen (SIGSTOP: connections are accepted by the kernel, never answered)
        for the duration of the block, and always thawed (SIGCONT) after it."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self._proc.send_signal(signal.SIGCONT)

    def flush(self) -> None:
        with redis.Redis(host=self.host, port=self.port, socket_timeout=5) as client:
            client.flushall()

    def stop(self) -> None:
        if self._proc is not None:
            _stop(self._proc, signal.SIGTERM)
            self._proc = None
        shutil.rmtree(self._root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    name = postgres_server.create_database()
    try:
        yield postgres_server.url(name)
    finally:
        with contextlib.suppress(psycopg.Error):
            postgres_server.drop_database(name)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    redis_server.flush()
    return redis_server.url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each engine (not migrated)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'swarmgate.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest_asyncio.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    """A migrated ``Database`` on each engine, closed after the test."""
    db = Database.from_url(database_url)
    try:
        await migrate(db)
        yield db
    finally:
        await db.close()
