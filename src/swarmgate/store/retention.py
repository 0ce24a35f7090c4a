"""Retention of the usage ledger and the audit log (seed 003: 30 days), pruned in the background.

Every ``ledger.prune_interval`` seconds, on every replica: ledger rows that ended longer ago than
``ledger.retention`` and audit rows older than ``audit.retention`` are deleted (either retention
unset: those rows are kept). Each is one ``DELETE`` on an indexed time, idempotent, so replicas
pruning at once only repeat each other's work. Nothing here is on the request path: a failure is
logged and tried again next round (the same pattern as the keys' lifecycle job).
"""

from __future__ import annotations

import asyncio
import logging
import time

from swarmgate.config import Audit, Ledger
from swarmgate.errors import StoreError
from swarmgate.store.audit import AuditStore
from swarmgate.store.usage import UsageStore
from swarmgate.types import Clock

log = logging.getLogger("swarmgate.store")


class Retention:
    def __init__(
        self,
        usage: UsageStore,
        audit: AuditStore,
        ledger: Ledger,
        audit_config: Audit,
        clock: Clock = time.time,
    ) -> None:
        self._usage = usage
        self._audit = audit
        self._ledger = ledger
        self._audit_config = audit_config
        self._clock = clock

    async def run_once(self) -> tuple[int, int]:
        """One round: (ledger rows, audit rows) deleted."""
        now = self._clock()
        usage = audit = 0
        if self._ledger.retention is not None:
            usage = await self._usage.prune(now - self._ledger.retention)
        if self._audit_config.retention is not None:
            audit = await self._audit.prune(now - self._audit_config.retention)
        if usage or audit:
            log.info("retention: deleted %d ledger and %d audit rows", usage, audit)
        return usage, audit

    async def run(self) -> None:
        """``run_once`` now and every ``ledger.prune_interval`` seconds, until cancelled."""
        interval = self._ledger.prune_interval
        while True:
            try:
                await self.run_once()
            except StoreError as exc:
                log.warning("retention: %s; trying again in %.0f s", exc, interval)
            await asyncio.sleep(interval)
