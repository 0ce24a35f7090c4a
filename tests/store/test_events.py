"""The cross-replica event bus on a real Redis, including a Redis that hangs (SIGSTOP)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from swarmgate.store.events import RedisBus
from tests.plugins.servers import RedisServer

pytestmark = pytest.mark.redis

PUBLISH_TIMEOUT = 0.25
ALLOWANCE = 0.15  # scheduling on a shared 2-core machine


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own: it is frozen, and must not take the shared one along."""
    server = RedisServer()
    try:
        yield server.start()
    finally:
        server.stop()


async def _until(predicate, timeout: float) -> float:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, "not in time"
        await asyncio.sleep(0.02)
    return time.monotonic() - start


async def test_an_event_reaches_the_other_bus(redis_url: str) -> None:
    sender, receiver = RedisBus(redis_url), RedisBus(redis_url)
    heard: list[str] = []
    receiver.subscribe("chan", heard.append)
    mine: list[str] = []
    sender.subscribe("chan", mine.append)
    await receiver.start()
    try:
        await sender.publish("chan", "key_1")
        assert mine == ["key_1"]  # local listeners at once
        await _until(lambda: heard == ["key_1"], 5)
    finally:
        await sender.close()
        await receiver.close()


async def test_a_hung_redis_does_not_hold_a_publish_and_the_event_arrives_later(
    own_redis: RedisServer,
) -> None:
    sender = RedisBus(own_redis.url, publish_timeout=PUBLISH_TIMEOUT)
    receiver = RedisBus(own_redis.url)
    heard: list[str] = []
    receiver.subscribe("chan", heard.append)
    mine: list[str] = []
    sender.subscribe("chan", mine.append)
    await receiver.start()
    try:
        await sender.publish("chan", "warm")  # connected before Redis hangs
        await _until(lambda: heard == ["warm"], 5)
        with own_redis.hung():
            for n in range(3):
                start = time.monotonic()
                await sender.publish("chan", f"key_{n}")
                elapsed = time.monotonic() - start
                assert elapsed < PUBLISH_TIMEOUT + ALLOWANCE, elapsed
            assert mine == ["warm", "key_0", "key_1", "key_2"]
            await asyncio.sleep(0.5)
            assert heard == ["warm"]
        # Redis is back: the events were kept and are sent, in order (a retry may repeat one).
        await _until(lambda: {"key_0", "key_1", "key_2"} <= set(heard), 5)
        firsts = [heard.index(f"key_{n}") for n in range(3)]
        assert firsts == sorted(firsts), heard
    finally:
        await sender.close()
        await receiver.close()


async def test_close_does_not_wait_on_a_hung_redis(own_redis: RedisServer) -> None:
    bus = RedisBus(own_redis.url, publish_timeout=PUBLISH_TIMEOUT)
    await bus.publish("chan", "warm")
    with own_redis.hung():
        await bus.publish("chan", "lost")
        start = time.monotonic()
        await bus.close()
        assert time.monotonic() - start < PUBLISH_TIMEOUT + ALLOWANCE
