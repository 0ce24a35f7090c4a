"""Retention: ledger and audit rows past their retention are pruned; recent ones, or all of them
with retention unset, are kept; a store that is down is tried again next round."""

from __future__ import annotations

import asyncio

import pytest

from swarmgate.config import Audit, Ledger, Responses
from swarmgate.errors import StoreError
from swarmgate.store.audit import AuditRecord, AuditStore
from swarmgate.store.responses import ResponseStore, StoredResponse
from swarmgate.store.retention import Retention
from swarmgate.store.sql import Database
from swarmgate.store.usage import UsageRecord, UsageStore

NOW = 1_800_000_000.0
DAY = 86400.0


def usage(n: int, ts: float) -> UsageRecord:
    return UsageRecord(
        f"r{n}", ts, "k", "o", "default", "m", "d", "/v1/chat/completions",
        1, 1, 0.0, 0.1, None, 200, False, False,
    )  # fmt: skip


async def fill(db: Database) -> tuple[UsageStore, AuditStore]:
    usages, audit = UsageStore(db), AuditStore(db)
    ages = [0.5, 29, 31, 400]  # days
    await usages.insert_many([usage(n, NOW - age * DAY) for n, age in enumerate(ages)])
    await audit.insert_many(
        [AuditRecord(action=f"a{n}", ts=NOW - age * DAY) for n, age in enumerate(ages)]
    )
    return usages, audit


async def test_rows_past_retention_go(database: Database) -> None:
    usages, audit = await fill(database)
    job = Retention(usages, audit, Ledger(), Audit(retention=10 * DAY), clock=lambda: NOW)
    assert await job.run_once() == (2, 3, 0)  # ledger: 30 days (seed 003); audit: 10 days
    assert sorted(await usages.request_ids()) == ["r0", "r1"]
    records, _ = await audit.query()
    assert [r.action for r in records] == ["a0"]
    assert await job.run_once() == (0, 0, 0)


async def test_no_retention_keeps_everything(database: Database) -> None:
    usages, audit = await fill(database)
    job = Retention(usages, audit, Ledger(retention=None), Audit(retention=None), clock=lambda: NOW)
    assert await job.run_once() == (0, 0, 0)
    assert len(await usages.request_ids()) == 4


class DownOnce(UsageStore):
    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.calls = 0

    async def prune(self, before: float) -> int:
        self.calls += 1
        if self.calls == 1:
            raise StoreError("database is down")
        return await super().prune(before)


async def test_the_job_runs_every_interval_through_failures(database: Database) -> None:
    _, audit = await fill(database)
    usages = DownOnce(database)
    config = Ledger(prune_interval=0.01)
    task = asyncio.create_task(Retention(usages, audit, config, Audit(), clock=lambda: NOW).run())
    try:
        for _ in range(500):
            if len(await usages.request_ids()) == 2:
                break
            await asyncio.sleep(0.01)
        assert sorted(await usages.request_ids()) == ["r0", "r1"]
        assert usages.calls >= 2
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_stored_responses_past_retention_go(database: Database) -> None:
    usages, audit = await fill(database)
    store = ResponseStore(database)
    for n, age in enumerate([1, 29, 31, 90]):  # days
        await store.put(StoredResponse(f"resp_{n}", "k", NOW - age * DAY, [], [], {"id": n}))
    job = Retention(
        usages, audit, Ledger(retention=None), Audit(retention=None), lambda: NOW, store
    )
    assert await job.run_once() == (0, 0, 2)  # OpenAI's 30 days, by default
    assert [await store.get(f"resp_{n}", "k") is not None for n in range(4)] == [
        True, True, False, False
    ]  # fmt: skip
    forever = Retention(
        usages, audit, Ledger(), Audit(), lambda: NOW + 400 * DAY, store, Responses(retention=None)
    )
    assert (await forever.run_once())[2] == 0
