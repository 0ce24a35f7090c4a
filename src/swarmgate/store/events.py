"""Cross-replica events (key revoked, IP blocked): Redis pub/sub, with an in-process twin.

Events are hints that shorten the time until every replica sees a change; correctness never
depends on them, because caches also expire on their own TTL. So an admin change never waits
on Redis for long: ``RedisBus.publish`` calls this process's listeners, puts the event in a
bounded outbox and waits at most ``publish_timeout`` (``redis.publish_timeout``, 0.25 s) for a
background sender to hand it to Redis. A sender that cannot (Redis down, or hung: connections
accepted, never answered) keeps the events, in order, and retries with backoff until Redis
answers, so they still reach every replica once it does; a retry may deliver an event twice,
which listeners (idempotent cache drops) do not mind. Events still unsent when the bus closes
(a CLI command exiting) are dropped with a warning: the replicas' cache TTL covers them. The
subscriber reconnects with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger("swarmgate.events")

Listener = Callable[[str], None]

SEND_TIMEOUT = 2.0  # one attempt of the background sender; then it reconnects and retries
MAX_BACKOFF = 1.0  # between attempts: after a hang, an event goes out within ~1 s of recovery
MAX_UNSENT = 10_000  # events kept while Redis is away; past it the oldest are dropped


class EventBus(Protocol):
    def subscribe(self, channel: str, listener: Listener) -> None: ...
    async def publish(self, channel: str, message: str) -> None: ...
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> bool | None:
        """Whether the bus's server answers; None when there is no server (one process)."""
        ...


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

    async def ping(self) -> bool | None:
        return None


class RedisBus:
    def __init__(self, url: str, *, publish_timeout: float = 0.25) -> None:
        self._redis = aioredis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
        self._publish_timeout = publish_timeout
        self._listeners: defaultdict[str, list[Listener]] = defaultdict(list)
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._unsent: deque[tuple[str, str, asyncio.Future[None]]] = deque()
        self._sender: asyncio.Task[None] | None = None

    def subscribe(self, channel: str, listener: Listener) -> None:
        self._listeners[channel].append(listener)

    async def publish(self, channel: str, message: str) -> None:
        """Tell this process's listeners, then the other replicas through Redis, waiting for
        Redis at most ``publish_timeout`` seconds (the sender keeps trying after that)."""
        # Local listeners run at once; other replicas hear it through Redis (we hear our own
        # message a second time: listeners are idempotent cache drops).
        for listener in self._listeners[channel]:
            listener(message)
        sent = self._enqueue(channel, message)
        try:
            # shield: giving up waiting must not cancel the event, only our wait for it.
            await asyncio.wait_for(asyncio.shield(sent), self._publish_timeout)
        except TimeoutError:
            log.warning(
                "redis did not take the %s event within %.2f s; retrying in the background "
                "(replicas drop the key within auth.cache_ttl at the latest)",
                channel,
                self._publish_timeout,
            )

    def _enqueue(self, channel: str, message: str) -> asyncio.Future[None]:
        sent: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if len(self._unsent) >= MAX_UNSENT:
            dropped_channel, _, dropped = self._unsent.popleft()
            dropped.cancel()
            log.warning("redis away too long: a %s event dropped", dropped_channel)
        self._unsent.append((channel, message, sent))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send(), name="swarmgate-redis-publish")
        return sent

    async def _send(self) -> None:
        """Publish the outbox oldest first; an event leaves it only once Redis has taken it.
        Returns when it is empty (no await between that check and returning, so ``_enqueue``
        never appends to an outbox whose sender has finished)."""
        backoff = 0.1
        failures = 0
        while self._unsent:
            channel, message, sent = self._unsent[0]
            try:
                async with asyncio.timeout(SEND_TIMEOUT):
                    await self._redis.publish(channel, message)
            except (RedisError, OSError, TimeoutError) as exc:
                # One warning per outage, not one per attempt.
                level = logging.WARNING if failures == 0 else logging.DEBUG
                log.log(level, "could not publish %s event (%r); retrying", channel, exc)
                failures += 1
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            if failures:
                log.warning("redis is back: %s event published after %d retries", channel, failures)
            backoff, failures = 0.1, 0
            self._unsent.popleft()
            if not sent.done():
                sent.set_result(None)

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

    async def ping(self, timeout: float = 2.0) -> bool | None:
        try:
            async with asyncio.timeout(timeout):
                return bool(await self._redis.ping())
        except (RedisError, OSError, TimeoutError):
            return False

    async def close(self) -> None:
        for task in (self._task, self._sender):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._unsent:
            log.warning(
                "%d events not published (redis unavailable): replicas drop the keys within "
                "auth.cache_ttl",
                len(self._unsent),
            )
            for _, _, sent in self._unsent:
                sent.cancel()
            self._unsent.clear()
        await self._redis.aclose()
