"""Inference through a database outage: two replicas on a real PostgreSQL, stopped under load.

The replicas share a PostgreSQL server of this module's own (the test stops it) and the real
Redis, and re-check keys every 0.5 s (``cache_ttl``), so an outage of a few seconds outlives
every cached entry many times over. Keys in use before the outage must lose no request; a
well-formed key never seen before cannot be checked and gets 503 with ``Retry-After``; a
malformed one gets 401; a revocation event over Redis still drops a key while the database is
down; and once PostgreSQL is back the audit log holds every failed attempt exactly once.
"""

from __future__ import annotations

import collections
import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from swarmgate.store import names
from tests.auth.e2e import (
    Fleet,
    Node,
    assert_clean_log,
    audit_records,
    call,
    create_key,
    server_secret,
    wait_for,
)
from tests.plugins.processes import free_port
from tests.plugins.servers import PostgresServer

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

TTL = 0.5
OUTAGE = 2.5  # seconds with PostgreSQL stopped: five TTLs
RUN_UP = 0.6  # seconds of load before the outage, and after it


def models() -> dict[str, Any]:
    url = f"http://127.0.0.1:{free_port()}"  # never called: keys are tried on /v1/models
    return {"m": {"deployments": [{"url": url}]}}


def models_call(gw: Node, secret: str, rid: str | None = None) -> tuple[int, dict[str, str]]:
    headers = {"X-Request-ID": rid} if rid else {}
    reply = call(gw.url + "/v1/models", key=secret, headers=headers)
    return reply.status, reply.headers


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of this test's own: it is stopped and started again."""
    server = PostgresServer()
    try:
        yield server.start()
    finally:
        server.stop()


class Load:
    """Requests with the given keys, round robin over the replicas, from one thread."""

    def __init__(self, nodes: list[Node], secrets_: list[str]) -> None:
        self._nodes = nodes
        self._secrets = secrets_
        self._stop = threading.Event()
        self.statuses: collections.Counter[int] = collections.Counter()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            node = self._nodes[n % len(self._nodes)]
            status, _ = models_call(node, self._secrets[n % len(self._secrets)])
            self.statuses[status] += 1
            n += 1

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)


def test_a_database_outage_costs_no_requests_from_keys_in_use(
    fleet: Fleet, own_postgres: PostgresServer, redis_url: str
) -> None:
    config = {
        "models": models(),
        "store": {"url": own_postgres.url(own_postgres.create_database())},
        "redis": {"url": redis_url},
    }
    env = {"SWARMGATE_AUTH__SECRET": server_secret(), "SWARMGATE_AUTH__CACHE_TTL": str(TTL)}
    a = fleet.gateway(config, env)
    b = fleet.gateway(config, env)
    nodes = [a, b]
    in_use = [create_key(a)[1] for _ in range(4)]
    dropped_id, dropped = create_key(a)
    for secret in [*in_use, dropped]:
        for node in nodes:
            assert models_call(node, secret)[0] == 200

    expected: list[str] = []  # request ids of the failed attempts the audit log must hold
    with Load(nodes, in_use) as load:
        time.sleep(RUN_UP)
        own_postgres.halt()
        down_at = time.monotonic()
        try:
            for n in range(6):
                unknown = "sk-sg-" + secrets.token_urlsafe(32)
                rid = f"outage-unknown-{n}"
                status, headers = models_call(nodes[n % 2], unknown, rid)
                assert status == 503, status  # cannot be checked: never "invalid"
                assert int(headers["retry-after"]) >= 1, headers
                expected.append(rid)
                rid = f"outage-malformed-{n}"
                assert models_call(nodes[n % 2], "sk-nope-" + "x" * n, rid)[0] == 401
                expected.append(rid)
            # A revocation event reaches both replicas through Redis while the database is down.
            with redis.Redis.from_url(redis_url) as client:
                client.publish(names.KEY_EVENTS, dropped_id)
            for i, node in enumerate(nodes):
                rid = f"outage-dropped-{i}"
                wait_for(lambda n=node: models_call(n, dropped)[0] == 503, 5, what="dropped")
                status, headers = models_call(node, dropped, rid)
                assert status == 503 and "retry-after" in headers, status
                expected.append(rid)
            time.sleep(max(0.0, OUTAGE - (time.monotonic() - down_at)))
            outage = time.monotonic() - down_at
            during = sum(load.statuses.values())
        finally:
            own_postgres.resume()
        time.sleep(RUN_UP)
    total = sum(load.statuses.values())
    print(f"\noutage {outage:.1f} s: {total} requests from keys in use ({during} until PG was up)")
    print(f"statuses: {dict(load.statuses)}")
    assert load.statuses == {200: total}, load.statuses  # no request lost
    assert during > 20  # the load really ran through the outage

    def failures() -> collections.Counter[str]:
        records = audit_records(a, action="auth.failure")
        return collections.Counter(
            r["request_id"] for r in records if (r["request_id"] or "").startswith("outage-")
        )

    wait_for(lambda: set(failures()) == set(expected), 15, 0.2, "the audit log complete")
    time.sleep(0.5)  # a second replay would show up by now (flushes every 0.2 s)
    counted = failures()
    assert counted == collections.Counter(expected), counted  # each exactly once
    print(f"audit: {len(expected)} failed attempts during the outage, {sum(counted.values())} rows")
    for node in nodes:
        node.stop()
        assert_clean_log(node)
