"""AuditStore: batched inserts, filters and keyset pagination, on both engines."""

from __future__ import annotations

from typing import Any

import pytest

from swarmgate.store.audit import AuditRecord, AuditStore
from swarmgate.store.sql import Database


@pytest.fixture
def audit(database: Database) -> AuditStore:
    return AuditStore(database)


def _records() -> list[AuditRecord]:
    out = []
    for i in range(10):
        out.append(
            AuditRecord(
                action="auth.failure" if i % 3 == 0 else "key.create",
                ts=1000.0 + i,
                outcome="denied" if i % 3 == 0 else "ok",
                actor=f"user{i % 2}",
                target=f"key_{i}",
                client_ip="127.0.0.1",
                request_id=f"req-{i}",
                details={"i": i, "tags": ["a", "b"]},
            )
        )
    return out


async def test_records_round_trip_newest_first(audit: AuditStore) -> None:
    await audit.insert_many(_records())
    await audit.insert_many([])
    records, cursor = await audit.query(limit=100)
    assert cursor is None
    assert [r.target for r in records] == [f"key_{i}" for i in reversed(range(10))]
    first = records[-1]
    assert first.id is not None
    assert first == AuditRecord(
        id=first.id,
        action="auth.failure",
        ts=1000.0,
        outcome="denied",
        actor="user0",
        target="key_0",
        client_ip="127.0.0.1",
        request_id="req-0",
        details={"i": 0, "tags": ["a", "b"]},
    )


async def test_filters_combine(audit: AuditStore) -> None:
    await audit.insert_many(_records())

    async def targets(**filters: Any) -> list[str | None]:
        records, _ = await audit.query(limit=100, **filters)
        return [r.target for r in records]

    assert await targets(action="auth.failure") == ["key_9", "key_6", "key_3", "key_0"]
    assert await targets(outcome="denied", actor="user0") == ["key_6", "key_0"]
    assert await targets(since=1007.0) == ["key_9", "key_8", "key_7"]
    assert await targets(since=1002.0, until=1004.0) == ["key_3", "key_2"]
    assert await targets(action="ip.block") == []


async def test_pages_cover_everything_once(audit: AuditStore) -> None:
    await audit.insert_many(_records())
    seen: list[str | None] = []
    cursor: int | None = None
    pages = 0
    while True:
        records, cursor = await audit.query(action="key.create", limit=2, cursor=cursor)
        pages += 1
        seen.extend(r.target for r in records)
        if cursor is None:
            break
        # A record arriving mid-way does not shift the pages being read.
        await audit.insert_many([AuditRecord(action="key.create", ts=2000.0, target="late")])
    assert pages == 3
    assert seen == ["key_8", "key_7", "key_5", "key_4", "key_2", "key_1"]
