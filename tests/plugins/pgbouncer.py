"""A real connection pooler for the store's tests: Debian's ``pgbouncer`` in transaction pooling
mode, unprivileged, on a free loopback port, in front of the test PostgreSQL.

Fixture:
    pgbouncer   (function) ``start(postgres_url, pool_size=2) -> url``: a pgbouncer for that
                database, serving it through ``pool_size`` server connections; stopped after

In transaction mode a server connection belongs to a client for one transaction only, so
anything a client leaves on a session (a prepared statement, a ``SET``, a session advisory
lock) is found by the next client on that server connection, or missing for its own next
transaction. A pool of one server connection makes that certain rather than likely.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url

from tests.plugins.servers import START_TIMEOUT, free_port

PGBOUNCER = Path(shutil.which("pgbouncer") or "/usr/sbin/pgbouncer")
CONFIG = """\
[databases]
{database} = host={host} port={port} dbname={database} pool_size={pool_size}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen}
unix_socket_dir =
auth_type = trust
auth_file = {root}/users.txt
pool_mode = transaction
max_client_conn = 200
default_pool_size = {pool_size}
server_reset_query =
logfile = {root}/pgbouncer.log
pidfile =
"""


class Pgbouncer:
    def __init__(self, postgres_url: str, pool_size: int) -> None:
        if not os.access(PGBOUNCER, os.X_OK):
            pytest.fail(
                f"{PGBOUNCER} not found: install it with `apt-get install pgbouncer` "
                "(the tests use a real server, they are never skipped)",
                pytrace=False,
            )
        self.target = make_url(postgres_url)
        self.port = free_port()
        self.pool_size = pool_size
        self.root = Path(tempfile.mkdtemp(prefix="swarmgate-pgbouncer-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self._run_as: dict[str, Any] = {}
        if os.geteuid() == 0:  # pgbouncer refuses to run as root
            account = pwd.getpwnam("postgres")
            os.chown(self.root, account.pw_uid, account.pw_gid)
            self._run_as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}

    @property
    def url(self) -> str:
        return self.target.set(host="127.0.0.1", port=self.port).render_as_string(
            hide_password=False
        )

    def start(self) -> Pgbouncer:
        user = self.target.username or "postgres"
        (self.root / "users.txt").write_text(f'"{user}" ""\n')
        ini = self.root / "pgbouncer.ini"
        ini.write_text(
            CONFIG.format(
                database=self.target.database,
                host=self.target.host,
                port=self.target.port,
                pool_size=self.pool_size,
                listen=self.port,
                root=self.root,
            )
        )
        for path in (ini, self.root / "users.txt"):
            path.chmod(0o644)
        self.proc = subprocess.Popen(
            [str(PGBOUNCER), str(ini)],
            cwd=self.root,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            **self._run_as,
        )
        deadline = time.monotonic() + START_TIMEOUT
        dsn = make_url(self.url).set(drivername="postgresql").render_as_string(False)
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pgbouncer exited at start:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    pass
                with psycopg.connect(dsn, connect_timeout=2, prepare_threshold=None) as conn:
                    conn.execute("SELECT 1")
                return self
            except (OSError, psycopg.OperationalError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"pgbouncer not ready:\n{self.log()}") from None
                time.sleep(0.05)

    def log(self) -> str:
        path = self.root / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else "(no log)"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # pgbouncer's "safe shutdown"
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def pgbouncer() -> Iterator[Callable[..., str]]:
    started: list[Pgbouncer] = []

    def start(postgres_url: str, pool_size: int = 2) -> str:
        bouncer = Pgbouncer(postgres_url, pool_size).start()
        started.append(bouncer)
        return bouncer.url

    try:
        yield start
    finally:
        for bouncer in started:
            bouncer.stop()
