"""Two gateway replicas on one real PostgreSQL and one real Redis, and the store going away.

The replicas share the server secret and cache verified principals for a LONG time
(``cache_ttl`` 60 s), so when a change made on replica A is seen on replica B within seconds,
only Redis pub/sub can explain it. A second pair has no Redis and a short TTL: there the TTL is
what bounds the delay. A last gateway loses its PostgreSQL database for a while (connections
refused and killed by the server itself): keys it has verified keep working, the audit records
of that time are spooled to disk and replayed once the database is back.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
import yaml
from psycopg import sql
from sqlalchemy.engine import make_url

from swarmgate.store import names
from tests.auth.e2e import (
    Fleet,
    Node,
    admin,
    assert_clean_log,
    assert_error,
    audit_records,
    call,
    create_key,
    server_secret,
    wait_for,
)
from tests.plugins.processes import free_port
from tests.plugins.servers import PostgresServer, RedisServer

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

PROPAGATION_LIMIT = 5.0  # seconds; the cache TTL of the Redis pair is 60
NO_REDIS_TTL = 2.0


def models() -> dict[str, Any]:
    url = f"http://127.0.0.1:{free_port()}"  # never called: keys are tried on /v1/models
    return {"m": {"deployments": [{"url": url}]}}


def works(gw: Node, secret: str, **headers: str) -> bool:
    return call(gw.url + "/v1/models", key=secret, headers=headers).status == 200


@contextlib.contextmanager
def database(server: PostgresServer) -> Iterator[str]:
    name = server.create_database()
    try:
        yield name
    finally:
        with contextlib.suppress(psycopg.Error):
            server.drop_database(name)


@pytest.fixture(scope="module")
def pair(
    fleet: Fleet, postgres_server: PostgresServer, redis_server: RedisServer
) -> Iterator[tuple[Node, Node]]:
    with database(postgres_server) as name:
        config = {
            "models": models(),
            "store": {"url": postgres_server.url(name)},
            "redis": {"url": redis_server.url},
            "auth": {"ip": {"trusted_proxies": ["127.0.0.1"]}},
        }
        env = {
            "SWARMGATE_AUTH__SECRET": server_secret(),
            "SWARMGATE_AUTH__CACHE_TTL": "60",
            "SWARMGATE_AUTH__ROTATION_GRACE": "0",
        }
        a = fleet.gateway(config, env)
        # B shares the store and the secret; A's bootstrap admin key is already stored.
        b = fleet.gateway(config, env)
        yield a, b
        for node in (a, b):
            node.stop()
            assert_clean_log(node)


def a_store(gw: Node) -> str:
    url: str = yaml.safe_load(gw.config_path.read_text())["store"]["url"]
    return url


def _warm(secret: str, *nodes: Node) -> None:
    for node in nodes:
        assert works(node, secret), node.url


def _seconds_until_refused(gw: Node, secret: str) -> float:
    return wait_for(lambda: not works(gw, secret), PROPAGATION_LIMIT + 5, 0.02, "refused on B")


def test_key_created_on_a_works_on_b(pair: tuple[Node, Node]) -> None:
    a, b = pair
    _, secret = create_key(a, models=["m"])
    assert works(b, secret) and works(a, secret)
    assert works(b, a.admin_key)  # the admin key A bootstrapped is B's too
    assert not works(b, "sk-sg-" + secrets.token_urlsafe(32))


def test_only_the_event_explains_fast_propagation(
    pair: tuple[Node, Node], postgres_server: PostgresServer, redis_server: RedisServer
) -> None:
    """The control: a revocation written to the database behind the replicas' backs (no event)
    is not seen for as long as the principal is cached; the event alone makes both drop it."""
    a, b = pair
    key_id, secret = create_key(a)
    _warm(secret, a, b)
    name = make_url(a_store(a)).database
    assert name is not None
    with psycopg.connect(postgres_server.dsn(name), autocommit=True) as conn:
        conn.execute("UPDATE api_keys SET revoked_at = %s WHERE id = %s", (time.time(), key_id))
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        assert works(a, secret) and works(b, secret)  # served from the caches
        time.sleep(0.1)
    with redis.Redis.from_url(redis_server.url) as client:
        client.publish(names.KEY_EVENTS, key_id)
    for node in (a, b):
        elapsed = _seconds_until_refused(node, secret)
        assert elapsed < PROPAGATION_LIMIT, elapsed


def test_revocation_on_a_reaches_b_through_redis(pair: tuple[Node, Node]) -> None:
    a, b = pair
    key_id, secret = create_key(a)
    _warm(secret, a, b)
    assert admin(a, "POST", f"/admin/keys/{key_id}/revoke").status == 200
    assert not works(a, secret)
    elapsed = _seconds_until_refused(b, secret)
    assert elapsed < PROPAGATION_LIMIT, elapsed


def test_rotation_without_grace_on_a_reaches_b(pair: tuple[Node, Node]) -> None:
    a, b = pair
    key_id, old = create_key(a)
    _warm(old, a, b)
    reply = admin(a, "POST", f"/admin/keys/{key_id}/rotate")  # default grace: 0 here
    assert reply.status == 200 and reply.body["old_secret_valid_for"] == 0
    elapsed = _seconds_until_refused(b, old)
    assert elapsed < PROPAGATION_LIMIT, elapsed
    assert works(b, reply.body["secret"]) and not works(a, old)


def test_expiry_on_b_reaches_a(pair: tuple[Node, Node]) -> None:
    a, b = pair
    key_id, secret = create_key(a)
    _warm(secret, a, b)
    assert admin(b, "POST", f"/admin/keys/{key_id}/expire").status == 200
    elapsed = _seconds_until_refused(a, secret)
    assert elapsed < PROPAGATION_LIMIT, elapsed


def test_a_cached_principal_never_outlives_its_key(pair: tuple[Node, Node]) -> None:
    """Expiry needs no event: the cache (60 s here) keeps a principal only until the key's
    expiry."""
    a, b = pair
    reply = admin(a, "POST", "/admin/keys", {"name": "e", "owner": "o", "expires_in": "2s"})
    secret, expires_at = reply.body["secret"], reply.body["key"]["expires_at"]
    _warm(secret, a, b)
    for node in (a, b):
        _seconds_until_refused(node, secret)
        assert time.time() - expires_at < 1.0


def test_cli_revocation_reaches_both_replicas(pair: tuple[Node, Node], fleet: Fleet) -> None:
    a, b = pair
    key_id, secret = create_key(a)
    _warm(secret, a, b)
    env = {"SWARMGATE_AUTH__SECRET": a.env["SWARMGATE_AUTH__SECRET"]}
    result = fleet.cli("keys", "revoke", "--config", str(a.config_path), key_id, env=env)
    assert result.returncode == 0, result.stderr
    for node in (a, b):
        elapsed = _seconds_until_refused(node, secret)
        assert elapsed < PROPAGATION_LIMIT, elapsed


def test_ip_block_on_a_reaches_b(pair: tuple[Node, Node]) -> None:
    a, b = pair
    _, secret = create_key(a)
    client = {"X-Forwarded-For": "192.0.2.44"}
    assert works(b, secret, **client)
    assert admin(a, "POST", "/admin/ip-blocks", {"cidr": "192.0.2.0/24"}).status == 201
    elapsed = wait_for(lambda: not works(b, secret, **client), PROPAGATION_LIMIT + 5, 0.02, "block")
    assert elapsed < PROPAGATION_LIMIT, elapsed
    reply = call(b.url + "/v1/models", key=secret, headers=client)
    assert_error(reply, 403, "permission_error", "ip_blocked")
    assert admin(a, "DELETE", "/admin/ip-blocks/192.0.2.0/24").status == 200
    elapsed = wait_for(lambda: works(b, secret, **client), PROPAGATION_LIMIT + 5, 0.02, "unblock")
    assert elapsed < PROPAGATION_LIMIT, elapsed


# ----------------------------------------------------------------- without Redis


def test_without_redis_revocation_reaches_b_within_the_ttl(
    fleet: Fleet, postgres_server: PostgresServer
) -> None:
    with database(postgres_server) as name:
        config = {"models": models(), "store": {"url": postgres_server.url(name)}}
        env = {
            "SWARMGATE_AUTH__SECRET": server_secret(),
            "SWARMGATE_AUTH__CACHE_TTL": str(NO_REDIS_TTL),
        }
        a = fleet.gateway(config, env)
        b = fleet.gateway(config, env)
        try:
            key_id, secret = create_key(a)
            _warm(secret, a, b)
            assert admin(a, "POST", f"/admin/keys/{key_id}/revoke").status == 200
            assert not works(a, secret)  # A's own cache is dropped at once
            elapsed = wait_for(lambda: not works(b, secret), NO_REDIS_TTL + 5, 0.02, "refused on B")
            assert elapsed < NO_REDIS_TTL + 1.0, elapsed
        finally:
            for node in (a, b):
                node.stop()
            assert_clean_log(a)
            assert_clean_log(b)


# ----------------------------------------------------------------- the database goes away


def _set_connections(server: PostgresServer, name: str, allowed: bool) -> None:
    """Let clients connect to database ``name``, or refuse them and end every open session."""
    with psycopg.connect(server.dsn("postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS {}").format(
                sql.Identifier(name), sql.SQL("true" if allowed else "false")
            )
        )
        if not allowed:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )


def _spooled(path: Path) -> list[dict[str, Any]]:
    lines: list[str] = []
    for file in (path, path.with_name(path.name + ".replay")):
        if file.exists():
            lines.extend(line for line in file.read_text().splitlines() if line.strip())
    return [json.loads(line) for line in lines]


def test_database_outage_keeps_cached_keys_and_replays_audit(
    fleet: Fleet, postgres_server: PostgresServer
) -> None:
    with database(postgres_server) as name:
        config = {"models": models(), "store": {"url": postgres_server.url(name)}}
        gw = fleet.gateway(config, {"SWARMGATE_AUTH__CACHE_TTL": "60"})
        spool = Path(yaml.safe_load(gw.config_path.read_text())["audit"]["spool_path"])
        try:
            _, secret = create_key(gw)
            assert works(gw, secret) and works(gw, gw.admin_key)  # both verified and cached

            _set_connections(postgres_server, name, allowed=False)
            down_at = time.time()
            try:
                for _ in range(20):  # cached keys keep working, from memory
                    assert works(gw, secret)
                # What needs the database fails clearly (503), never with a 500.
                unknown = "sk-sg-" + secrets.token_urlsafe(32)
                assert_error(call(gw.url + "/v1/models", key=unknown), 503, "api_error")
                body = {"name": "x", "owner": "x"}
                assert_error(admin(gw, "POST", "/admin/keys", body), 503, "api_error")
                # Failed authentications are audited; their records must survive the outage.
                for n in range(5):
                    headers = {"Authorization": f"Basic outage-{n}"}
                    assert call(gw.url + "/v1/models", headers=headers).status == 401
                wait_for(
                    lambda: sum(r["action"] == "auth.failure" for r in _spooled(spool)) >= 5,
                    10,
                    what="audit records spooled while the database is down",
                )
                up_at = time.time()
            finally:
                _set_connections(postgres_server, name, allowed=True)

            def replayed() -> list[dict[str, Any]]:
                return [
                    r
                    for r in audit_records(gw, action="auth.failure", since=down_at, until=up_at)
                    if r["details"].get("reason") == "malformed"
                ]

            wait_for(lambda: len(replayed()) == 5, 15, what="spooled audit records replayed")
            wait_for(lambda: not _spooled(spool), 5, what="the spool emptied")
            assert len(replayed()) == 5  # each exactly once
            _, fresh = create_key(gw)  # the store is back for writes too
            assert works(gw, fresh)
        finally:
            gw.stop()
        assert_clean_log(gw)
