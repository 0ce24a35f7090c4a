"""The ledger's invariant against a real gateway process: exactly one record per request, through
a database outage under load and through a clean stop (DESIGN.md: no record is lost, and the
ledger count equals the requests served).

PostgreSQL (a server of this module's own) is stopped in the middle of a load and started
again; on SQLite, the outage is another process holding the file's write lock for longer than
the gateway's busy timeout (5 s), so that the writer's inserts fail as they would on a dead
disk. Each request carries its own X-Request-ID; afterwards the ledger must hold each of them
exactly once, whatever status it was answered with, and the metrics must show that records
really went through the spool.
"""

from __future__ import annotations

import collections
import contextlib
import signal
import sqlite3
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import psycopg
import pytest

from tests.api.e2e import FAST, MESSAGES
from tests.auth.e2e import assert_clean_log, create_key, wait_for
from tests.plugins.processes import Fleet, Gateway, Sim
from tests.plugins.servers import PostgresServer

RUN_UP = 0.6  # seconds of load before the outage, and after it
OUTAGE = 2.5  # seconds with PostgreSQL stopped
SQLITE_LOCK = 6.0  # seconds the SQLite file is locked: past the gateway's 5 s busy timeout


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    processes = Fleet(tmp_path_factory.mktemp("ledger"))
    yield processes
    processes.stop_all()


@pytest.fixture(scope="module")
def sim(fleet: Fleet) -> Sim:
    return fleet.sim({"chat": FAST}, testing=True)


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        yield server.start()
    finally:
        server.stop()


class Ledger:
    """Reads a gateway's ledger from its database, as an operator's query would."""

    def __init__(self, url: str) -> None:
        self.url = url

    def request_ids(self, prefix: str) -> collections.Counter[str]:
        query = "SELECT request_id FROM usage_ledger"
        if self.url.startswith("sqlite"):
            with contextlib.closing(sqlite3.connect(self.url.partition(":///")[2])) as db:
                rows = db.execute(query).fetchall()
        else:
            dsn = self.url.replace("postgresql+psycopg://", "postgresql://")
            with psycopg.connect(dsn) as conn:
                rows = conn.execute(query).fetchall()
        return collections.Counter(r[0] for r in rows if r[0].startswith(prefix))


class Load:
    """Chat completions through the official SDK from a few threads, each with its own request
    id; every id sent is kept, with the status it got (anything: all of them are usage)."""

    def __init__(self, gw: Gateway, secret: str, prefix: str, threads: int = 3) -> None:
        self._gw, self._secret, self._prefix = gw, secret, prefix
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.sent: list[str] = []
        self.statuses: collections.Counter[int] = collections.Counter()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)
        ]

    def _run(self, worker: int) -> None:
        client = openai.OpenAI(
            base_url=self._gw.url + "/v1", api_key=self._secret, max_retries=0, timeout=15
        )
        n = 0
        with client:
            while not self._stop.is_set():
                rid = f"{self._prefix}-{worker}-{n}"
                n += 1
                try:
                    client.chat.completions.create(
                        model="chat",
                        messages=MESSAGES,
                        max_tokens=2,
                        extra_headers={"X-Request-ID": rid},
                    )
                    status = 200
                except openai.APIStatusError as exc:
                    status = exc.status_code
                with self._lock:
                    self.sent.append(rid)
                    self.statuses[status] += 1

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(20)


def metric(gw: Gateway, state: str) -> float:
    with urllib.request.urlopen(gw.url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith(f'gateway_ledger_records_total{{state="{state}"}}'):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no gateway_ledger_records_total{{state={state!r}}}")


@contextlib.contextmanager
def sqlite_write_lock(path: str) -> Iterator[None]:
    """Another process's write lock on the file, as long as the block runs (readers go on)."""
    db = sqlite3.connect(path, isolation_level=None, timeout=10)
    try:
        db.execute("BEGIN IMMEDIATE")
        yield
    finally:
        db.execute("ROLLBACK")
        db.close()


def gateway(fleet: Fleet, sim: Sim, url: str, flush_interval: float = 0.2) -> Gateway:
    config: dict[str, Any] = {
        "models": {"chat": {"deployments": [{"url": sim.url}]}},
        "store": {"url": url},
        "ledger": {"flush_interval": flush_interval},
    }
    return fleet.gateway(config)


def assert_exactly_once(ledger: Ledger, load: Load, prefix: str) -> None:
    expected = collections.Counter(load.sent)
    wait_for(lambda: set(ledger.request_ids(prefix)) == set(expected), 30, 0.2, "the ledger")
    time.sleep(0.6)  # a record stored twice would show up by now (flushes every 0.2 s)
    counted = ledger.request_ids(prefix)
    assert counted == expected, (
        f"missing {len(expected - counted)}, twice {len(counted - expected)}"
    )


@pytest.mark.postgres
def test_postgresql_stopped_under_load_loses_no_record_and_doubles_none(
    fleet: Fleet, sim: Sim, own_postgres: PostgresServer
) -> None:
    url = own_postgres.url(own_postgres.create_database())
    gw = gateway(fleet, sim, url)
    _, secret = create_key(gw)
    with Load(gw, secret, "pg") as load:
        time.sleep(RUN_UP)
        own_postgres.halt()
        try:
            time.sleep(OUTAGE)
            during = len(load.sent)
        finally:
            own_postgres.resume()
        time.sleep(RUN_UP)
    total = len(load.sent)
    print(f"\n{total} requests ({during} until PostgreSQL was back): {dict(load.statuses)}")
    assert during > 20  # the load really ran through the outage
    assert_exactly_once(Ledger(url), load, "pg")
    assert metric(gw, "spooled") > 0 and metric(gw, "replayed") > 0  # the spool was used
    assert metric(gw, "dropped") == 0
    assert metric(gw, "written") >= metric(gw, "queued") >= total
    gw.stop()
    assert_clean_log(gw)


def test_a_locked_sqlite_file_under_load_loses_no_record_and_doubles_none(
    fleet: Fleet, sim: Sim, tmp_path: Path
) -> None:
    path = str(tmp_path / "ledger.db")
    url = f"sqlite+aiosqlite:///{path}"
    gw = gateway(fleet, sim, url)
    _, secret = create_key(gw)
    with Load(gw, secret, "lite") as load:
        time.sleep(RUN_UP)
        with sqlite_write_lock(path):
            time.sleep(SQLITE_LOCK)
        time.sleep(RUN_UP)
    print(f"\n{len(load.sent)} requests: {dict(load.statuses)}")
    assert load.statuses == {200: len(load.sent)}  # the hot path never waited on the lock
    assert_exactly_once(Ledger(url), load, "lite")
    assert metric(gw, "spooled") > 0 and metric(gw, "dropped") == 0
    gw.stop()


@pytest.mark.parametrize(
    "engine", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_a_clean_stop_loses_no_record(
    fleet: Fleet, sim: Sim, tmp_path: Path, engine: str, request: pytest.FixtureRequest
) -> None:
    if engine == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'stop.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    # A long interval: when the gateway is told to stop, the records are still in memory.
    gw = gateway(fleet, sim, url, flush_interval=30.0)
    _, secret = create_key(gw)
    with Load(gw, secret, "stop") as load:
        time.sleep(RUN_UP)
    ledger = Ledger(url)
    assert sum(ledger.request_ids("stop").values()) < len(load.sent)  # not stored yet
    assert gw.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once stopped
    assert ledger.request_ids("stop") == collections.Counter(load.sent)
    assert_clean_log(gw)
