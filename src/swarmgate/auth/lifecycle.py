"""Keys' lifecycle after creation (seeds 001 and 002): retention of ended keys, rotation due.

Every ``auth.lifecycle_interval`` seconds, on every replica:

- with ``auth.key_retention`` set, keys revoked or expired longer ago than that are deleted with
  their secrets (``KeyStore.purge``: an idempotent ``DELETE`` on their age, one replica at a time
  on PostgreSQL), each deletion audited as ``key.delete``; the audit log keeps every record of
  them. IP blocks that have ended are deleted too (nothing reads them any more).
- with ``auth.rotation_period`` set, the active keys whose current secret is older than that
  (made at creation or at the last rotation) are counted into the gauge
  ``gateway_keys_due_for_rotation``; ``KeyAdmin.due_for_rotation`` lists them.

Nothing here is on the request path: a failure is logged and tried again next round.
"""

from __future__ import annotations

import asyncio
import logging
import time

from prometheus_client import CollectorRegistry, Gauge

from swarmgate.auth.audit import AuditLog
from swarmgate.config import Auth
from swarmgate.errors import StoreError
from swarmgate.store.ipblocks import IPBlockStore
from swarmgate.store.keys import KeyStore
from swarmgate.types import Clock

log = logging.getLogger("swarmgate.auth")
ACTOR = "swarmgate"


class KeyLifecycle:
    def __init__(
        self,
        config: Auth,
        keys: KeyStore,
        ip_blocks: IPBlockStore,
        audit: AuditLog,
        registry: CollectorRegistry,
        clock: Clock = time.time,
    ) -> None:
        self._config = config
        self._keys = keys
        self._ip_blocks = ip_blocks
        self._audit = audit
        self._clock = clock
        self.due: Gauge | None = None
        if config.rotation_period is not None:
            self.due = Gauge(
                "gateway_keys_due_for_rotation",
                "Active API keys not rotated within auth.rotation_period",
                registry=registry,
                # Every worker counts the same rows: show one count, not their sum.
                multiprocess_mode="livemax",
            )

    async def run_once(self) -> None:
        """One round: delete what retention allows, count the keys due for rotation."""
        now = self._clock()
        retention = self._config.key_retention
        if retention is not None:
            for key_id in await self._keys.purge(now - retention):
                self._audit.record(
                    "key.delete",
                    actor=ACTOR,
                    target=key_id,
                    details={"reason": "retention", "retention_seconds": retention},
                )
        await self._ip_blocks.purge(now)
        period = self._config.rotation_period
        if self.due is not None and period is not None:
            self.due.set(await self._keys.count_due_for_rotation(now - period, now))

    async def run(self) -> None:
        """``run_once`` now and every ``auth.lifecycle_interval`` seconds, until cancelled."""
        while True:
            try:
                await self.run_once()
            except StoreError as exc:
                log.warning("key lifecycle: %s; trying again in %.0f s", exc, self._interval)
            await asyncio.sleep(self._interval)

    @property
    def _interval(self) -> float:
        return self._config.lifecycle_interval
