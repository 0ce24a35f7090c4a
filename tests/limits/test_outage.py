"""Redis stopped and started again under load (real Redis, a real gateway): with
``fail_open`` every request is still served, from in-process limits scaled to this replica's
share, quickly; the outage and the recovery are logged once each and counted; exact limits
resume without a restart. With ``fail_closed`` a hung Redis gets a quick 503."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
import redis

from tests.limits.e2e import Upstream
from tests.limits.test_sdk import create_key
from tests.plugins.processes import Gateway
from tests.plugins.servers import RedisServer

pytestmark = pytest.mark.redis

BODY = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis of this test's own, to stop and start again."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.close()


def post(gw: Gateway, secret: str) -> tuple[int, float]:
    started = time.monotonic()
    request = urllib.request.Request(
        gw.url + "/v1/chat/completions",
        data=BODY,
        headers={"authorization": f"Bearer {secret}", "content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            reply.read()
            status = reply.status
    except urllib.error.HTTPError as exc:
        exc.read()
        status = exc.code
    return status, time.monotonic() - started


class Load:
    """Requests from a few threads until stopped: (time, status, seconds) of each."""

    def __init__(self, gw: Gateway, secret: str, threads: int = 3) -> None:
        self.results: list[tuple[float, int, float]] = []
        self._stop = threading.Event()

        def run() -> None:
            while not self._stop.is_set():
                status, seconds = post(gw, secret)
                self.results.append((time.monotonic(), status, seconds))

        self._threads = [threading.Thread(target=run, daemon=True) for _ in range(threads)]
        for thread in self._threads:
            thread.start()

    def stop(self) -> list[tuple[float, int, float]]:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)
        return self.results


def config(upstream: Upstream, redis_url: str, **limits: Any) -> dict[str, Any]:
    return {
        "models": {"m": {"deployments": [{"url": upstream.url}]}},
        "redis": {"url": redis_url},
        "limits": {"tiers": {"t": {"rpm": 100000, "concurrent": 50}}, **limits},
    }


def metric(gw: Gateway, name: str) -> float:
    with urllib.request.urlopen(gw.url + "/metrics", timeout=5) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith(name):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_fail_open_serves_through_a_redis_restart_and_recovers(
    gateway_factory: Callable[..., Gateway], own_redis: RedisServer, upstream: Upstream
) -> None:
    gw = gateway_factory(config(upstream, own_redis.url, replicas=2))
    secret = create_key(gw, "t")
    load = Load(gw, secret)
    time.sleep(1.0)
    own_redis.stop()
    down_at = time.monotonic()
    time.sleep(1.5)
    own_redis._root.mkdir(parents=True, exist_ok=True)
    own_redis.start()
    up_at = time.monotonic()
    time.sleep(2.0)
    results = load.stop()
    during = [r for r in results if down_at + 0.2 < r[0] < up_at]
    after = [r for r in results if r[0] > up_at + 1.0]
    assert during and after
    assert {status for _, status, _ in results} == {200}
    assert max(seconds for _, _, seconds in results) < 1.0  # no request waited on Redis
    # Exact (Redis) counting again: the key's counters are back in the restarted Redis.
    with redis.Redis.from_url(own_redis.url) as client:
        assert client.keys("swarmgate:limit:key:*")
    log = gw.output()
    # Once per transition, not per request. A loaded machine may also time out one call
    # before the outage (a real transition of its own, logged and counted the same way).
    downs = log.count("rate limiter: redis unavailable")
    assert 1 <= downs <= 3, log
    assert log.count("rate limiter: redis is back") == downs, log
    assert metric(gw, 'gateway_limiter_redis_transitions_total{state="down"}') == downs
    assert metric(gw, 'gateway_limiter_redis_transitions_total{state="up"}') == downs
    assert "Traceback" not in log


def test_fail_open_scales_the_limits_to_the_replicas_share(
    gateway_factory: Callable[..., Gateway], own_redis: RedisServer, upstream: Upstream
) -> None:
    cfg = config(upstream, own_redis.url, replicas=2)
    cfg["limits"]["tiers"]["t"] = {"rpm": 10}
    gw = gateway_factory(cfg)
    secret = create_key(gw, "t")
    own_redis.stop()
    statuses = [post(gw, secret)[0] for _ in range(8)]
    assert statuses == [200] * 5 + [429] * 3  # 10 / 2 replicas while Redis is away


def test_fail_closed_answers_a_quick_503_while_redis_hangs(
    gateway_factory: Callable[..., Gateway], own_redis: RedisServer, upstream: Upstream
) -> None:
    gw = gateway_factory(config(upstream, own_redis.url, redis_failure="fail_closed"))
    secret = create_key(gw, "t")
    assert post(gw, secret)[0] == 200
    with own_redis.hung():
        answers = [post(gw, secret) for _ in range(5)]
    assert {status for status, _ in answers} == {503}
    assert max(seconds for _, seconds in answers) < 0.5
    time.sleep(1.0)  # the probe finds it again
    assert post(gw, secret)[0] == 200
