"""/health as seeds 001, 003 and 004 check it, /health/live, and the root endpoint (seed 002)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest

from swarmgate import __version__
from tests.plugins.processes import Gateway, Sim, free_port
from tests.plugins.servers import PostgresServer, RedisServer

FAST = {"ttft_ms": 1, "tokens_per_second": 2000, "max_tokens_default": 2}
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def _get(url: str) -> tuple[int, dict[str, Any], float]:
    started = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, json.loads(r.read()), time.monotonic() - started
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), time.monotonic() - started


def _dependencies(gw: Gateway) -> dict[str, str]:
    """gateway_dependency_up's samples, by dependency."""
    with urllib.request.urlopen(gw.url + "/metrics", timeout=10) as r:
        lines = r.read().decode().splitlines()
    prefix = 'gateway_dependency_up{dependency="'
    return {
        line[len(prefix) :].split('"')[0]: line.rsplit(" ", 1)[1]
        for line in lines
        if line.startswith(prefix)
    }


def _chat(gw: Gateway, model: str) -> int:
    request = urllib.request.Request(
        gw.url + "/v1/chat/completions",
        data=json.dumps({**CHAT, "model": model}).encode(),
        headers={"Authorization": f"Bearer {gw.admin_key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_health_answers_the_seeds_fields(
    sim_factory: Callable[..., Sim], gateway_factory: Callable[..., Gateway]
) -> None:
    sim = sim_factory({"a": FAST, "b": FAST})
    gw = gateway_factory(
        {
            "server": {"name": "unified-api-gateway"},
            "models": {m: {"deployments": [{"url": sim.url}]} for m in ("a", "b")},
        }
    )
    for path in ("/health", "/gateway/health"):
        status, body, _ = _get(gw.url + path)
        assert status == 200
        assert body["status"] == "healthy" and body["gateway"] == "unified-api-gateway"
        assert body["models"] == ["a", "b"] and body["version"] == __version__
        assert datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00"))
        checks = body["checks"]
        assert checks["database"]["status"] == "up"  # the gateway's SQLite store
        assert checks["redis"] == {"status": "not_configured"}
        assert checks["models"]["a"] == {"status": "healthy", "deployments": 1, "healthy": 1}
    assert _dependencies(gw) == {"database": "1.0"}  # Redis is not configured: no series
    assert _get(gw.url + "/health/live")[:2] == (200, {"status": "alive", "version": __version__})


def test_root_names_the_gateway_and_links_onwards(
    sim_factory: Callable[..., Sim], gateway_factory: Callable[..., Gateway]
) -> None:
    sim = sim_factory({"a": FAST})
    gw = gateway_factory({"models": {"a": {"deployments": [{"url": sim.url}]}}})
    status, body, _ = _get(gw.url + "/")
    assert status == 200 and body["name"] == "swarmgate" and body["version"] == __version__
    assert set(body["links"]) >= {"docs", "openapi", "health", "models", "metrics"}
    for path in body["links"].values():  # every link leads somewhere that answers
        request = urllib.request.Request(
            gw.url + path, headers={"Authorization": f"Bearer {gw.admin_key}"}
        )
        with urllib.request.urlopen(request, timeout=10) as r:
            assert r.status == 200, path


def test_lost_deployments_degrade_then_fail_the_health(
    sim_factory: Callable[..., Sim], gateway_factory: Callable[..., Gateway]
) -> None:
    sim = sim_factory({"a": FAST})
    dead = f"http://127.0.0.1:{free_port()}"
    gw = gateway_factory(
        {
            "models": {
                "a": {"deployments": [{"url": sim.url, "name": "a-up"}, {"url": dead}]},
                "b": {"deployments": [{"url": dead, "name": "b-down"}]},
            }
        }
    )
    for _ in range(5):  # the circuit breaker's threshold (seed 004)
        assert _chat(gw, "b") == 502  # nothing to fail over to
    assert _chat(gw, "b") == 503  # its circuit is open: the fallback response
    status, body, _ = _get(gw.url + "/health")
    assert (status, body["status"]) == (200, "degraded")  # model a still serves
    assert body["checks"]["models"]["b"] == {"status": "unhealthy", "deployments": 1, "healthy": 0}
    # Model a's dead deployment is seen failing (each failure is then retried on a-up) until
    # its circuit opens; however the balancer shares the requests, it tries it five times.
    for _ in range(60):
        assert _chat(gw, "a") == 200
        if _get(gw.url + "/health")[1]["checks"]["models"]["a"]["status"] == "degraded":
            break
    assert _get(gw.url + "/health")[1]["checks"]["models"]["a"]["status"] == "degraded"


def test_nothing_servable_is_unhealthy(
    gateway_factory: Callable[..., Gateway],
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    gw = gateway_factory({"models": {"b": {"deployments": [{"url": dead}]}}})
    assert _get(gw.url + "/health")[0] == 200  # not known to be down yet
    for _ in range(5):
        _chat(gw, "b")
    status, body, _ = _get(gw.url + "/health")
    assert (status, body["status"]) == (503, "unhealthy")


@pytest.fixture
def own_stores() -> Iterator[tuple[PostgresServer, RedisServer]]:
    pg, redis = PostgresServer(), RedisServer()
    try:
        yield pg.start(), redis.start()
    finally:
        redis.stop()
        pg.stop()


def test_a_store_outage_degrades_and_health_answers_without_waiting(
    sim_factory: Callable[..., Sim],
    gateway_factory: Callable[..., Gateway],
    own_stores: tuple[PostgresServer, RedisServer],
) -> None:
    pg, redis = own_stores
    sim = sim_factory({"a": FAST})
    gw = gateway_factory(
        {
            "models": {"a": {"deployments": [{"url": sim.url}]}},
            "store": {"url": pg.url(pg.create_database())},
            "redis": {"url": redis.url},
            "monitoring": {"health_interval": 0.2},
        }
    )
    status, body, _ = _get(gw.url + "/health")
    assert (status, body["checks"]["database"]["status"], body["checks"]["redis"]["status"]) == (
        200,
        "up",
        "up",
    )
    assert _dependencies(gw) == {"database": "1.0", "redis": "1.0"}
    pg.halt()
    with redis.hung():
        deadline = time.monotonic() + 10
        while True:
            status, body, seconds = _get(gw.url + "/health")
            # Answered from snapshots: never the pings' own 2 s bound.
            assert seconds < 0.5, seconds
            checks = body["checks"]
            if checks["database"]["status"] == "down" and checks["redis"]["status"] == "down":
                break
            assert time.monotonic() < deadline, body
            time.sleep(0.1)
        assert (status, body["status"]) == (200, "degraded")
        assert _get(gw.url + "/health/live")[0] == 200
        # What the alerts read (deploy/prometheus/alerts.yml: DatabaseDown, RedisDown).
        assert _dependencies(gw) == {"database": "0.0", "redis": "0.0"}
