"""The real-server fixtures themselves: each test gets a clean Redis and its own database."""

from __future__ import annotations

import psycopg
import pytest
import redis

from tests.plugins.servers import PostgresServer


@pytest.mark.parametrize("run", [1, 2])
def test_redis_is_empty_for_every_test(redis_url: str, run: int) -> None:
    with redis.Redis.from_url(redis_url) as client:
        assert client.dbsize() == 0
        client.set("left-behind", run)


@pytest.mark.parametrize("run", [1, 2])
def test_every_test_gets_a_fresh_database(
    postgres_server: PostgresServer, postgres_url: str, run: int
) -> None:
    dsn = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as conn:
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        assert tables.fetchone() == (0,)
        conn.execute("CREATE TABLE left_behind (run int)")
    with psycopg.connect(postgres_server.dsn("postgres")) as conn:
        count = conn.execute("SELECT count(*) FROM pg_database WHERE datname LIKE 't\\_%'")
        assert count.fetchone() == (1,)
