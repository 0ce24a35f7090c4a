"""The IP blocks every replica shares: kept in the store, mirrored into each process's policy.

Operator blocks (admin API) and automatic blocks (``auth.ip.max_failures`` failed attempts) are
rows of ``ip_blocks``, so that ``swarmgate ip-blocks list|delete``, run against the store from a
shell, sees and lifts both: no lock-out outlives the store, not even one that shuts out every
admin key. Each replica's ``IPPolicy`` follows the table: ``reload`` replaces its dynamic blocks
with the rows in force (every few seconds, and at once on an ``IP_EVENTS`` message over Redis),
so a row deleted anywhere is lifted everywhere.

An automatic block starts in this process at once (the policy's failure tracker, no I/O on the
failing request) and is stored in the background; from then on it is one of the stored blocks.
If the store cannot be reached it stays a block of this process only, until it ends, this
replica restarts, or an admin lifts it here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Iterable
from typing import Any

from swarmgate.auth.ip import IPBlock, IPPolicy, host_cidr
from swarmgate.errors import StoreError
from swarmgate.store import names
from swarmgate.store.events import EventBus
from swarmgate.store.ipblocks import IPBlockStore, StoredBlock
from swarmgate.types import Clock

log = logging.getLogger("swarmgate.auth")

AUTOBLOCK_REASON = "too many failed attempts"
AUTOBLOCK_ACTOR = "swarmgate"


def policy_view(blocks: Iterable[StoredBlock]) -> list[IPBlock]:
    return [
        IPBlock(b.cidr, b.expires_at, b.reason, "failures" if b.source == "failures" else "admin")
        for b in blocks
    ]


class SharedBlocks:
    def __init__(
        self, policy: IPPolicy, store: IPBlockStore, events: EventBus, clock: Clock = time.time
    ) -> None:
        self._policy = policy
        self._store = store
        self._events = events
        self._clock = clock
        # A reload reads the table and then replaces the policy's blocks; an automatic block
        # stored in between would be dropped by it until the next reload. One at a time.
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    async def reload(self) -> None:
        """Make this process's dynamic blocks the stored ones in force (raises StoreError)."""
        async with self._lock:
            rows = await self._store.active(self._clock())
            self._policy.sync(policy_view(rows))

    def on_event(self, message: str) -> None:
        """An ``IP_EVENTS`` listener: ``unblock <cidr>`` lifts at once, anything else reloads."""
        action, _, cidr = message.partition(" ")
        if action == "unblock":
            self._policy.unblock(cidr)
        else:
            self._spawn(self.reload())

    def autoblocked(self, ip: str) -> None:
        """The policy has just blocked ``ip`` after failures: store it, off the request's path.
        Called on the failing request: must not await."""
        until = self._policy.failure_block(ip)
        cidr = host_cidr(ip)
        if until is not None and cidr is not None:
            self._spawn(self._keep(cidr, until))

    async def _keep(self, cidr: str, until: float) -> None:
        block = StoredBlock(
            cidr, AUTOBLOCK_REASON, self._clock(), until, AUTOBLOCK_ACTOR, source="failures"
        )
        try:
            async with self._lock:
                await self._store.put(block)
                self._policy.block(cidr, until, AUTOBLOCK_REASON, source="failures")
        except StoreError as exc:
            log.warning("automatic block of %s kept in this process only: %s", cidr, exc)
            return
        # The other replicas reload and block it too.
        await self._events.publish(names.IP_EVENTS, "block " + cidr)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("IP blocks: %s", task.exception())

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
