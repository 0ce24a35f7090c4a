"""Cross-replica events (key revoked, IP blocked): Redis pub/sub, with an in-process twin.

Events are hints that shorten the time until every replica sees a change; correctness never
depends on them, because caches also expire on their own TTL. So a publish that fails (Redis
down) is logged and dropped, and the subscriber reconnects with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger("swarmgate.events")

Listener = Callable[[str], None]


class EventBus(Protocol):
    def subscribe(self, channel: str, listener: Listener) -> None: ...
    async def publish(self, channel: str, message: str) -> None: ...
    async def start(self) -> None: ...
    async def close(self) -> None: ...


class LocalBus:
    """One process: publishing calls this process's listeners directly."""

    def __init__(self) -> None:
        self._listeners: defaultdict[str, list[Listener]] = defaultdict(list)

    def subscribe(self, channel: str, listener: Listener) -> None:
        self._listeners[channel].append(listener)

    async def publish(self, channel: str, message: str) -> None:
        for listener in self._listeners[channel]:
            listener(message)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


class RedisBus:
    def __init__(self, url: str) -> None:
        self._redis = aioredis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
        self._listeners: defaultdict[str, list[Listener]] = defaultdict(list)
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    def subscribe(self, channel: str, listener: Listener) -> None:
        self._listeners[channel].append(listener)

    async def publish(self, channel: str, message: str) -> None:
        # Local listeners run at once; other replicas hear it through Redis (we hear our own
        # message a second time: listeners are idempotent cache drops).
        for listener in self._listeners[channel]:
            listener(message)
        try:
            await self._redis.publish(channel, message)
        except (RedisError, OSError) as exc:
            log.warning("could not publish %s event (replicas rely on cache TTL): %s", channel, exc)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="swarmgate-redis-events")
        # Wait briefly for the subscription so that events published right after start arrive.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), 2)

    async def _listen(self) -> None:
        backoff = 0.1
        while True:
            try:
                pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
                async with pubsub:
                    await pubsub.subscribe(*self._listeners)
                    self._subscribed.set()
                    backoff = 0.1
                    async for message in pubsub.listen():
                        self._dispatch(message)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.warning("redis event subscription lost (%s); retrying in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def _dispatch(self, message: dict[str, object]) -> None:
        channel = message.get("channel")
        data = message.get("data")
        if isinstance(channel, bytes):
            channel = channel.decode()
        if isinstance(data, bytes):
            data = data.decode()
        if not isinstance(channel, str) or not isinstance(data, str):
            return
        for listener in self._listeners.get(channel, ()):
            try:
                listener(data)
            except Exception:
                log.exception("event listener for %s failed", channel)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._redis.aclose()
