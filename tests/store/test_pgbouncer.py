"""The store's connection pool (seed 001's figures) and the gateway behind pgbouncer in
transaction pooling mode, Debian's ``pgbouncer`` in front of the test PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import openai
import pytest
import sqlalchemy as sa

from swarmgate import store as stores
from swarmgate.config import parse_settings
from swarmgate.errors import StoreError
from swarmgate.store.keys import KeyStore
from swarmgate.store.sql import Database
from tests.api.e2e import FAST, MESSAGES
from tests.auth.e2e import assert_clean_log, create_key
from tests.plugins.processes import Gateway, Sim
from tests.store.test_keys import _hash, _record

MODELS = {"m": {"deployments": [{"url": "http://127.0.0.1:9"}]}}
# The same statement on every connection: psycopg prepares it after its fifth run.
REPEATED = sa.text("SELECT count(*) FROM pg_class WHERE relname = :name")


async def test_seed_001s_pool_figures_reach_the_engine() -> None:
    settings = parse_settings(
        {
            "models": MODELS,
            "store": {
                "url": "postgresql://gate@127.0.0.1:1/gate",
                "pool_size": 20,
                "max_overflow": 30,
                "pool_timeout": 30,
            },
        },
        {},
    )
    store = stores.open(settings)
    try:
        pool = store.db.engine.pool
        assert pool.size() == 20  # type: ignore[attr-defined]
        assert pool._max_overflow == 30  # type: ignore[attr-defined]
        assert pool._timeout == 30  # type: ignore[attr-defined]
    finally:
        await store.close()


async def test_a_query_waits_at_most_pool_timeout_for_a_connection(postgres_url: str) -> None:
    db = Database.from_url(postgres_url, pool_size=1, max_overflow=0, pool_timeout=0.5)
    try:
        async with db.connect() as held:
            await held.execute(sa.text("SELECT 1"))
            start = time.monotonic()
            with pytest.raises(StoreError):
                async with db.connect() as conn:
                    await conn.execute(sa.text("SELECT 1"))
            assert 0.4 < time.monotonic() - start < 3
        assert await db.ping()  # the connection is back in the pool
    finally:
        await db.close()


async def _run_repeatedly(db: Database, times: int = 8) -> None:
    # Each run its own transaction, on the one pooled client connection: in transaction mode
    # each may be given another server connection, or share one with another client. Committed
    # (``begin``), as the gateway's writes are: psycopg forgets its prepared statements on a
    # rollback, which ends every ``connect``.
    for _ in range(times):
        async with db.begin() as conn:
            await conn.execute(REPEATED, {"name": "pg_class"})


async def test_prepared_statements_are_what_breaks_behind_pgbouncer(
    postgres_url: str, pgbouncer: Callable[..., str]
) -> None:
    """The failure the setting exists for, shown: two clients, one server connection."""
    url = pgbouncer(postgres_url, pool_size=1)
    first = Database.from_url(url, pool_size=1, prepared_statements=True)
    second = Database.from_url(url, pool_size=1, prepared_statements=True)
    try:
        await _run_repeatedly(first)
        with pytest.raises(StoreError, match="prepared statement"):
            await _run_repeatedly(second)
    finally:
        await first.close()
        await second.close()


async def test_without_prepared_statements_clients_share_server_connections(
    postgres_url: str, pgbouncer: Callable[..., str]
) -> None:
    url = pgbouncer(postgres_url, pool_size=1)
    first, second = Database.from_url(url), Database.from_url(url)  # the default: off
    try:
        await _run_repeatedly(first)
        await _run_repeatedly(second)
        await asyncio.gather(_run_repeatedly(first), _run_repeatedly(second))
    finally:
        await first.close()
        await second.close()


async def test_the_store_migrates_and_serves_through_pgbouncer(
    postgres_url: str, pgbouncer: Callable[..., str]
) -> None:
    url = pgbouncer(postgres_url, pool_size=2)
    settings = parse_settings({"models": MODELS, "store": {"url": url, "pool_size": 4}}, {})
    # Two replicas starting at once: the migration's lock is a transaction's, never a session's.
    replicas = [stores.open(settings), stores.open(settings)]
    try:
        await asyncio.gather(*(r.migrate() for r in replicas))
        keys = [KeyStore(r.db) for r in replicas]
        await asyncio.gather(
            *(keys[i % 2].create(_record(f"k{i}"), _hash(i), f"sk-{i}") for i in range(20))
        )
        # Each lookup run far more than psycopg's threshold, from both replicas at once.
        found = await asyncio.gather(*(keys[i % 2].find_by_hash(_hash(i % 20)) for i in range(200)))
        assert all(f is not None for f in found)
        assert [await k.count() for k in keys] == [20, 20]
    finally:
        for r in replicas:
            await r.close()


def test_the_gateway_serves_and_accounts_behind_pgbouncer(
    postgres_url: str,
    pgbouncer: Callable[..., str],
    sim_factory: Callable[..., Sim],
    gateway_factory: Callable[..., Gateway],
    tmp_path: Path,
) -> None:
    url = pgbouncer(postgres_url, pool_size=2)
    sim = sim_factory({"chat": FAST})
    gw = gateway_factory(
        {
            "models": {"chat": {"deployments": [{"url": sim.url}]}},
            "store": {"url": url, "pool_size": 20, "max_overflow": 30, "pool_timeout": 30},
            "ledger": {"flush_interval": 0.2},
            "auth": {"cache_ttl": 0.05},  # every request looks its key up again
        }
    )
    _, secret = create_key(gw)
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=secret, max_retries=0)
    for _ in range(12):
        reply = client.chat.completions.create(model="chat", messages=MESSAGES)
        assert reply.choices[0].message.content
        time.sleep(0.06)
    usage = asyncio.run(_ledger_count(postgres_url))
    assert usage == 12, gw.output()
    assert_clean_log(gw)


async def _ledger_count(postgres_url: str) -> int:
    db = Database.from_url(postgres_url)
    try:
        deadline = time.monotonic() + 10
        while True:
            async with db.connect() as conn:
                count = int(await conn.scalar(sa.text("SELECT count(*) FROM usage_ledger")) or 0)
            if count >= 12 or time.monotonic() > deadline:
                return count
            await asyncio.sleep(0.1)
    finally:
        await db.close()
