"""The Redis counter store: every replica's admissions on one Redis primary, exact.

Each admission is one run of ``take`` (``limiter.lua``), which checks and charges all of a
request's limits atomically: all or none. The admissions of one event loop tick are
coalesced: ``take`` queues the request and one long-lived sender task sends everything queued
as one run of the batch script (``batch.lua`` over ``limiter.lua`` and ``settle.lua``: one
EVALSHA, reloaded on NOSCRIPT, however many admissions it carries), while the next batch
gathers behind it. Settlements (``settle``) ride along with the next batch. A plan's check
arguments are encoded once, so a request adds its lease and its tokens.

Failure: a round trip is bounded by ``limits.redis_timeout``. When it fails or times out the
store is *down*: admissions are decided at once by an in-process ``MemoryCounters`` whose
limits are scaled by this replica's share (``fail_open``: 1 / replicas, the replicas being
``limits.replicas`` or the count learned from their heartbeats in Redis), or refused with
``StoreError`` (``fail_closed``: the gateway answers 503). A probe pings Redis every
``PROBE_SECONDS``; once it answers (scripts reloaded, settlements left unsent replayed) the
store is up again. Each transition is logged once and counted.

A Redis that answers but cannot run the script (a proxy without EVAL, a renamed command)
stops start-up: limits never degrade silently to per-process counting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from importlib.resources import files
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from swarmgate.errors import StoreError
from swarmgate.limits import budget
from swarmgate.observability.metrics import Metrics
from swarmgate.store import names
from swarmgate.store.counters import MemoryCounters
from swarmgate.types import Check, CheckKind, Verdict

log = logging.getLogger("swarmgate.limits")

_LUA = files("swarmgate.store")
# One script: ``take`` (limiter.lua) and ``settle`` (settle.lua) run by batch.lua over a tick's
# operations, so that a round trip is one command however many it carries.
BATCH = "\n".join(
    _LUA.joinpath(name).read_text() for name in ("limiter.lua", "settle.lua", "batch.lua")
)
LINE = _LUA.joinpath("line.lua").read_text()
PROBE_SECONDS = 0.25  # while down: how often Redis is tried again
HEARTBEAT_SECONDS = 2.0  # each replica's mark in names.REPLICAS
HEARTBEAT_EXPIRY = 10.0  # a replica not heard from for this long is no longer counted
MAX_UNSENT = 100_000  # settlements kept while Redis is away (leases expire anyway)

# An admission waiting for the next round trip: its checks (for the fallback), the script's
# keys and arguments, and its verdict to come.
Pending = tuple[Sequence[Check], list[bytes], list[Any], "asyncio.Future[Verdict]"]
# A budget's counter outlives its period by this much (a late settlement still finds it).
SPEND_GRACE = 86400.0


class RedisCounters:
    def __init__(
        self,
        url: str,
        metrics: Metrics,
        *,
        timeout: float = 0.075,
        fail_open: bool = True,
        replicas: int | None = None,
    ) -> None:
        # Its own client: short timeouts, unlike the event bus's.
        self._redis = aioredis.Redis.from_url(
            url, socket_connect_timeout=max(timeout, 0.5), socket_timeout=max(timeout, 0.5)
        )
        self._metrics = metrics
        self._timeout = timeout
        self._fail_open = fail_open
        self._replicas_configured = replicas
        self.replicas = replicas or 1
        self.fallback = MemoryCounters(scale=1 / self.replicas)
        self._batch_sha = self._line_sha = ""
        # The arguments of a plan's checks, encoded once (budgets, whose keys change with the
        # period, are encoded per request).
        self._encoded: dict[tuple[Check, ...], tuple[list[bytes], list[bytes]]] = {}
        self._pending: list[Pending] = []
        self._settles: list[tuple[list[str], list[Any]]] = []
        self._wake = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        # Every lease this replica takes starts with it (``Admission``), so that the leases of
        # a replica that died can be told apart.
        self.replica_id = os.urandom(6).hex()
        self.up = False
        self._down_told = False  # the outage was logged (once per transition)

    async def start(self) -> None:
        try:
            async with asyncio.timeout(2.0):
                await self._load_scripts()
                # A run with no counters: proves the script runs here, not just that it loads.
                await self._redis.evalsha(self._batch_sha, 0, 0, 0, names.REPLICAS)
            self.up = True
            await self._beat_once()  # marked before its first lease
        except ResponseError as exc:
            await self._redis.aclose()
            raise StoreError(
                f"redis cannot run the rate limiter's Lua script ({exc}); swarmgate needs "
                "EVAL/EVALSHA on a single Redis primary (not a proxy that lacks them) and "
                "never falls back to per-process limits for that"
            ) from exc
        except (RedisError, OSError, TimeoutError) as exc:
            self._went_down(exc)
        loop = asyncio.get_running_loop()
        self._sender = loop.create_task(self._send(), name="swarmgate-limiter")
        self._heartbeat = loop.create_task(self._beat(), name="swarmgate-limiter-heartbeat")

    async def _load_scripts(self) -> None:
        self._batch_sha = str(await self._redis.script_load(BATCH))
        self._line_sha = str(await self._redis.script_load(LINE))

    async def take(self, checks: Sequence[Check], tokens: int, lease: str) -> Verdict:
        if not self.up:
            if not self._fail_open:
                raise StoreError("redis is unavailable (limits.redis_failure: fail_closed)")
            return self.fallback.take_now(checks, tokens, lease)
        keys, static = self._encoded.get(tuple(checks)) or self._encode(checks)
        args: list[Any] = [lease, tokens, *static]
        future: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()
        self._pending.append((checks, keys, args, future))
        self._wake.set()
        return await future

    def _encode(self, checks: Sequence[Check]) -> tuple[list[bytes], list[bytes]]:
        keys: list[bytes] = []
        args: list[bytes] = []
        now = time.time()
        spends = False
        for c in checks:
            if c.kind is CheckKind.SPEND:
                spends = True
                name, left = budget.current(c.period, now)
                keys.append((c.key + ":" + name).encode())
                args += (b"4", repr(float(c.limit)).encode(), repr(left).encode(), b"1")
                continue
            keys.append(c.key.encode())
            args += (
                b"%d" % c.kind,
                repr(float(c.limit)).encode(),
                repr(float(c.period)).encode(),
                b"%d" % c.burst,
            )
        if not spends:
            if len(self._encoded) >= 10_000:
                self._encoded.clear()
            self._encoded[tuple(checks)] = (keys, args)
        return keys, args

    def settle(
        self,
        checks: Sequence[Check],
        verdict: Verdict,
        lease: str,
        reserved: int,
        used: int,
        cost: float = 0.0,
    ) -> None:
        fallback = verdict.handles is not None  # taken by the fallback while Redis was away
        if fallback:
            self.fallback.settle(checks, verdict, lease, reserved, used, cost)
        keys: list[str] = []
        args: list[Any] = [lease, reserved, used, repr(cost), names.CAPACITY_FREED]
        now = time.time()
        for c in checks:
            kind = c.kind
            if kind is CheckKind.SPEND:
                # Sent even when the fallback took the request: Redis's budgets miss nothing.
                if cost > 0:
                    name, left = budget.current(c.period, now)
                    keys.append(c.key + ":" + name)
                    args += (4, left + SPEND_GRACE)
            elif fallback:
                continue
            elif (
                kind is CheckKind.CONCURRENT
                or kind is CheckKind.CAPACITY
                or (kind is CheckKind.TOKENS and used != reserved)
            ):
                keys.append(c.key)
                args += (int(kind), c.period)
        if keys:
            if len(self._settles) < MAX_UNSENT:
                self._settles.append((keys, args))
            self._wake.set()

    async def _send(self) -> None:
        while True:
            _stop_if_cancelled()
            if not self.up:
                self._fail_pending()
                if not await self._probe():
                    await asyncio.sleep(PROBE_SECONDS)
                continue
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            settles, self._settles = self._settles, []
            if not (batch or settles):
                continue
            try:
                await self._round_trip(batch, settles)
            except Exception as exc:
                # A bug of ours must not leave admissions waiting forever, nor stop the sender.
                log.exception("rate limiter: a round trip to redis failed unexpectedly")
                for *_, future in batch:
                    if not future.done():
                        future.set_exception(StoreError(f"rate limiter error: {exc!r}"))

    async def _round_trip(
        self, batch: list[Pending], settles: list[tuple[list[str], list[Any]]]
    ) -> None:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout):
                try:
                    results = await self._execute(batch, settles)
                except NoScriptError:
                    # Redis restarted (or was flushed of scripts): load them and run again.
                    # The script did not run, so running it again charges each admission once.
                    await self._load_scripts()
                    results = await self._execute(batch, settles)
        except NoScriptError as exc:
            raise StoreError(f"the rate limiter's script cannot be loaded: {exc}") from exc
        except ResponseError as exc:
            # The script failed while running: a bug of ours, not an outage (no fallback).
            log.error("rate limiter: the script failed in redis: %s", exc)
            for *_, future in batch:
                if not future.done():
                    future.set_exception(StoreError(f"the rate limiter's script failed: {exc}"))
            return
        except (RedisError, OSError, TimeoutError) as exc:
            self._metrics.limiter_redis_error(
                "timeout" if isinstance(exc, TimeoutError) else "error"
            )
            self._went_down(exc)
            self._settles[:0] = settles  # sent again once Redis is back
            for checks, _, args, future in batch:
                self._decide_without_redis(checks, args, future)
            return
        self._metrics.limiter_redis("admit" if batch else "settle", time.perf_counter() - started)
        for (_, keys, args, future), result in zip(batch, results, strict=False):
            if future.cancelled() and isinstance(result, list) and int(result[0]) < 0:
                # Its request was cancelled while waiting (a shutdown): what the script took
                # is given back at once, so that no lease waits out its expiry.
                self._give_back(keys, args)
            if not future.done():
                future.set_result(_verdict(result, (len(args) - 2) // 4))

    async def _execute(
        self, batch: list[Pending], settles: list[tuple[list[str], list[Any]]]
    ) -> list[Any]:
        """One run of the batch script: the settlements first (what finished before these
        admissions were asked frees room), then the admissions; their answers, in order."""
        keys: list[Any] = []
        args: list[Any] = [len(settles), len(batch), names.REPLICAS]
        for op_keys, op_args in settles:
            keys += op_keys
            args += (len(op_keys), len(op_args), *op_args)
        for _, taken_keys, op_args, _ in batch:
            keys += taken_keys
            args += (len(taken_keys), len(op_args), *op_args)
        return list(await self._redis.evalsha(self._batch_sha, len(keys), *keys, *args))

    def _give_back(self, keys: list[bytes], args: list[Any]) -> None:
        lease, tokens = args[0], args[1]
        back_keys: list[Any] = []
        back_args: list[Any] = [lease, tokens, 0, "0", names.CAPACITY_FREED]
        for key, j in zip(keys, range(2, len(args), 4), strict=True):
            kind = int(args[j])
            if kind in (CheckKind.TOKENS, CheckKind.CONCURRENT, CheckKind.CAPACITY):
                back_keys.append(key)
                back_args += (kind, args[j + 2])
        if back_keys:
            self._settles.append((back_keys, back_args))
            self._wake.set()

    async def join(self, key: str, lease: str, priority: int, wait: float, max_length: int) -> bool:
        """Put ``lease`` in the line for the pool capacity ``key`` (or keep its place);
        False when ``max_length`` wait already. While Redis is away there is no line (the
        fallback's waiters just try again): True."""
        if not self.up:
            return True
        try:
            async with asyncio.timeout(max(self._timeout, 0.25)):
                try:
                    joined = await self._redis.evalsha(
                        self._line_sha, 1, key, lease, priority, wait, max_length
                    )
                except NoScriptError:
                    await self._load_scripts()
                    joined = await self._redis.evalsha(
                        self._line_sha, 1, key, lease, priority, wait, max_length
                    )
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreError(f"redis: could not join the line for {key}: {exc!r}") from exc
        return bool(joined)

    def leave(self, key: str, lease: str, period: float) -> None:
        """Take ``lease`` out of the line for ``key`` (queued like a settlement)."""
        if self.up and len(self._settles) < MAX_UNSENT:
            self._settles.append(([key], [lease, 0, 0, "0", names.CAPACITY_FREED, 5, period]))
            self._wake.set()

    def _decide_without_redis(
        self, checks: Sequence[Check], args: list[Any], future: asyncio.Future[Verdict]
    ) -> None:
        if future.done():
            return
        if not self._fail_open:
            future.set_exception(StoreError("redis is unavailable"))
            return
        future.set_result(self.fallback.take_now(checks, args[1], args[0]))

    def _fail_pending(self) -> None:
        batch, self._pending = self._pending, []
        for checks, _, args, future in batch:
            self._decide_without_redis(checks, args, future)

    def _went_down(self, exc: BaseException) -> None:
        self.up = False
        if self._down_told:
            return
        self._down_told = True
        self._metrics.limiter_redis_state("down")
        what = f"fallback to in-process limits scaled to 1/{self.replicas}"
        log.warning(
            "rate limiter: redis unavailable (%r); %s until it answers",
            exc,
            what if self._fail_open else "refusing limited requests (503)",
        )

    async def _probe(self) -> bool:
        try:
            async with asyncio.timeout(max(self._timeout, 0.25)):
                await self._redis.ping()
                await self._load_scripts()
                if self._settles:
                    settles, self._settles = self._settles, []
                    await self._execute([], settles)
        except (RedisError, OSError, TimeoutError):
            return False
        self.up, self._down_told = True, False
        self.fallback.clear()
        self._metrics.limiter_redis_state("up")
        log.warning("rate limiter: redis is back; limits are exact across replicas again")
        return True

    async def restore_spend(self, spent: Mapping[str, tuple[float, float]]) -> int:
        """Budgets after Redis lost them (restarted without persistence, flushed): each
        counter missing in Redis is set from the ledger (``store.counters.MemoryCounters``'s
        twin); one that exists is kept, being more recent than the ledger. How many were set."""
        if not spent:
            return 0
        try:
            async with asyncio.timeout(5.0):
                pipe = self._redis.pipeline(transaction=False)
                for key, (total, left) in spent.items():
                    ttl = math.ceil((left + SPEND_GRACE) * 1000)
                    pipe.set(key, repr(total), nx=True, px=ttl)
                return sum(1 for done in await pipe.execute() if done)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("rate limiter: budgets not restored from the ledger (%r)", exc)
            return 0

    async def _beat(self) -> None:
        """Every replica marks itself in Redis: the count scales the fallback's limits, and a
        full concurrency or capacity counter drops the leases of replicas no longer marked
        (limiter.lua: one that died frees its slots within ``HEARTBEAT_EXPIRY``, not its
        leases' expiry)."""
        while True:
            if self.up:
                await self._beat_once()
            _stop_if_cancelled()
            await asyncio.sleep(HEARTBEAT_SECONDS)

    async def _beat_once(self) -> None:
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(1.0):
                now = time.time()
                pipe = self._redis.pipeline(transaction=False)
                pipe.zadd(names.REPLICAS, {self.replica_id: now})
                pipe.zremrangebyscore(names.REPLICAS, "-inf", now - HEARTBEAT_EXPIRY)
                pipe.zcard(names.REPLICAS)
                count = int((await pipe.execute())[-1])
                if self._replicas_configured is None and count >= 1:
                    self.replicas = count
                    self.fallback.scale = 1 / count

    async def close(self) -> None:
        for task in (self._sender, self._heartbeat):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._settles and self.up:
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._execute([], self._settles)
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(1.0):
                await self._redis.zrem(names.REPLICAS, self.replica_id)
        self._fail_pending()
        await self._redis.aclose()


def _stop_if_cancelled() -> None:
    """End a loop whose cancellation an ``asyncio.timeout`` turned into a ``TimeoutError``
    (a cancel that lands as the timeout expires: Python 3.11 loses it), else ``close``
    would wait for it forever."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _verdict(result: list[Any], n: int) -> Verdict:
    refused = int(result[0])
    wait = float(result[1])
    if refused >= 0:
        return Verdict(refused, math.inf if wait < 0 else wait)
    values = [float(v) for v in result[2:]]
    return Verdict(-1, 0.0, tuple(values[:n]), tuple(values[n:]))
