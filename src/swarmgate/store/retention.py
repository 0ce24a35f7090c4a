"""Retention of the usage ledger, the audit log (seed 003: 30 days) and stored responses (OpenAI's
30 days), pruned in the background.

Every ``ledger.prune_interval`` seconds, on every replica: ledger rows that ended longer ago than
``ledger.retention``, audit rows older than ``audit.retention`` and responses stored longer ago
than ``responses.retention`` are deleted (a retention unset: those rows are kept). Each is one
``DELETE`` on an indexed time, idempotent, so replicas pruning at once only repeat each other's
work. Nothing here is on the request path: a failure is logged and tried again next round (the
same pattern as the keys' lifecycle job).
"""

from __future__ import annotations

import asyncio
import logging
import time

from swarmgate.config import Audit, Ledger, Responses
from swarmgate.errors import StoreError
from swarmgate.store.audit import AuditStore
from swarmgate.store.responses import ResponseStore
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
        responses: ResponseStore | None = None,
        responses_config: Responses | None = None,
    ) -> None:
        self._usage = usage
        self._audit = audit
        self._ledger = ledger
        self._audit_config = audit_config
        self._clock = clock
        self._responses = responses
        self._responses_config = responses_config or Responses()

    async def run_once(self) -> tuple[int, int, int]:
        """One round: (ledger rows, audit rows, stored responses) deleted."""
        now = self._clock()
        usage = audit = stored = 0
        if self._ledger.retention is not None:
            usage = await self._usage.prune(now - self._ledger.retention)
        if self._audit_config.retention is not None:
            audit = await self._audit.prune(now - self._audit_config.retention)
        kept = self._responses_config.retention
        if self._responses is not None and kept is not None:
            stored = await self._responses.prune(now - kept)
        if usage or audit or stored:
            log.info(
                "retention: deleted %d ledger and %d audit rows, %d stored responses",
                usage,
                audit,
                stored,
            )
        return usage, audit, stored

    async def run(self) -> None:
        """``run_once`` now and every ``ledger.prune_interval`` seconds, until cancelled."""
        interval = self._ledger.prune_interval
        while True:
            try:
                await self.run_once()
            except StoreError as exc:
                log.warning("retention: %s; trying again in %.0f s", exc, interval)
            await asyncio.sleep(interval)
