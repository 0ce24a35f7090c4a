"""Key lifecycle on a real store (SQLite and PostgreSQL): a default expiry for new keys,
deletion of ended keys after a retention period, keys due for rotation and their gauge."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from swarmgate.auth.audit import AuditLog
from swarmgate.auth.keyadmin import Actor, KeyAdmin, immediate
from swarmgate.auth.keys import NEVER, KeyHasher, KeyService
from swarmgate.auth.lifecycle import KeyLifecycle
from swarmgate.config import Audit, Auth
from swarmgate.errors import BadRequest
from swarmgate.store.audit import AuditRecord, AuditStore
from swarmgate.store.events import LocalBus
from swarmgate.store.ipblocks import IPBlockStore, StoredBlock
from swarmgate.store.keys import KeyStore
from swarmgate.store.schema import api_key_secrets
from swarmgate.store.sql import Database
from swarmgate.types import Role

DAY = 86400.0
CLI = Actor("cli")


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def service(database: Database, clock: FakeClock, default: float | None = None) -> KeyService:
    return KeyService(KeyStore(database), KeyHasher(b"k" * 32), clock, default_expiry=default)


async def test_a_new_key_gets_the_default_expiry_unless_told_otherwise(
    database: Database, clock: FakeClock
) -> None:
    keys = service(database, clock, default=DAY)
    plain, _ = await keys.create("a", "alice", Role.USER)
    assert plain.expires_at == clock.now + DAY
    explicit, _ = await keys.create("b", "alice", Role.USER, expires_at=clock.now + 60)
    assert explicit.expires_at == clock.now + 60
    never, secret = await keys.create("c", "alice", Role.USER, expires_at=NEVER)
    assert never.expires_at is None
    clock.now += 10 * DAY
    assert await keys.lookup(secret) == never  # still works long after the default
    # The bootstrap admin key is how an operator gets in: it never expires by default.
    admin_secret = "sk-sg-" + "A" * 40
    assert await keys.bootstrap_admin(admin_secret) == admin_secret
    found = await keys.lookup(admin_secret)
    assert found is not None and found.expires_at is None


async def test_without_a_default_keys_do_not_expire(database: Database, clock: FakeClock) -> None:
    record, _ = await service(database, clock).create("a", "alice", Role.USER)
    assert record.expires_at is None


def lifecycle(
    database: Database, clock: FakeClock, tmp_path: Path, **auth: float
) -> tuple[KeyLifecycle, AuditLog, CollectorRegistry]:
    audit = AuditLog(AuditStore(database), Audit(spool_path=str(tmp_path / "spool")), clock)
    registry = CollectorRegistry()
    config = Auth.model_validate(auth)
    return (
        KeyLifecycle(
            config, KeyStore(database), IPBlockStore(database), audit, registry, clock=clock
        ),
        audit,
        registry,
    )


async def _secret_rows(database: Database, key_id: str) -> int:
    async with database.connect() as conn:
        query = sa.select(sa.func.count()).where(api_key_secrets.c.key_id == key_id)
        return int(await conn.scalar(query) or 0)


async def test_ended_keys_are_deleted_after_the_retention_period(
    database: Database, clock: FakeClock, tmp_path: Path
) -> None:
    keys = service(database, clock)
    store = KeyStore(database)
    audit_store = AuditStore(database)
    active, _ = await keys.create("active", "o", Role.USER)
    revoked_long_ago, _ = await keys.create("r-old", "o", Role.USER)
    expired_long_ago, _ = await keys.create("e-old", "o", Role.USER, expires_at=clock.now + 60)
    await keys.rotate(revoked_long_ago.id, 3600)  # two secrets: both must go
    await keys.revoke(revoked_long_ago.id)
    await audit_store.insert_many(
        [AuditRecord("key.revoke", clock.now, target=revoked_long_ago.id)]
    )
    clock.now += 8 * DAY
    revoked_lately, _ = await keys.create("r-new", "o", Role.USER)
    await keys.revoke(revoked_lately.id)
    expired_lately, _ = await keys.create("e-new", "o", Role.USER, expires_at=clock.now + 60)
    clock.now += DAY

    task, audit, _ = lifecycle(database, clock, tmp_path, key_retention=7 * DAY)
    await task.run_once()
    await audit.flush()

    assert await store.get(revoked_long_ago.id) is None
    assert await store.get(expired_long_ago.id) is None
    assert await _secret_rows(database, revoked_long_ago.id) == 0
    for kept in (active, revoked_lately, expired_lately):
        assert await store.get(kept.id) is not None
    # The audit log keeps what it knew of them, and says why they are gone.
    records, _ = await audit_store.query()
    by_action = sorted((r.action, r.target) for r in records)
    assert ("key.revoke", revoked_long_ago.id) in by_action
    deleted = sorted(r.target for r in records if r.action == "key.delete")
    assert deleted == sorted([revoked_long_ago.id, expired_long_ago.id])
    assert {r.actor for r in records if r.action == "key.delete"} == {"swarmgate"}

    await task.run_once()  # idempotent: nothing more to delete
    await audit.flush()
    records, _ = await audit_store.query(action="key.delete")
    assert len(records) == 2


async def test_replicas_purging_at_once_delete_each_key_once(
    database: Database, clock: FakeClock
) -> None:
    keys = service(database, clock)
    ids = []
    for i in range(20):
        record, _ = await keys.create(f"k{i}", "o", Role.USER)
        await keys.revoke(record.id)
        ids.append(record.id)
    clock.now += 2 * DAY
    replicas = [Database.from_url(str(database.engine.url)) for _ in range(4)]
    try:
        results = await asyncio.gather(*(KeyStore(db).purge(clock.now - DAY) for db in replicas))
    finally:
        for db in replicas:
            await db.close()
    deleted = [key_id for result in results for key_id in result]
    assert sorted(deleted) == sorted(ids)  # every key deleted, none twice
    assert await KeyStore(database).count() == 0


async def test_without_a_retention_period_nothing_is_deleted(
    database: Database, clock: FakeClock, tmp_path: Path
) -> None:
    keys = service(database, clock)
    record, _ = await keys.create("r", "o", Role.USER)
    await keys.revoke(record.id)
    clock.now += 3650 * DAY
    task, _, _ = lifecycle(database, clock, tmp_path)
    await task.run_once()
    assert await KeyStore(database).get(record.id) is not None


async def test_ended_ip_blocks_are_deleted(
    database: Database, clock: FakeClock, tmp_path: Path
) -> None:
    blocks = IPBlockStore(database)
    await blocks.put(StoredBlock("192.0.2.1/32", "", clock.now, clock.now + 10, "a"))
    await blocks.put(StoredBlock("192.0.2.2/32", "", clock.now, None, "a"))
    clock.now += 11
    task, _, _ = lifecycle(database, clock, tmp_path)
    await task.run_once()
    assert [b.cidr for b in await blocks.active(0)] == ["192.0.2.2/32"]


async def test_keys_due_for_rotation_are_listed_and_counted(
    database: Database, clock: FakeClock, tmp_path: Path
) -> None:
    store = KeyStore(database)
    keys = service(database, clock)
    admin = KeyAdmin(
        keys,
        store,
        LocalBus(),
        immediate(AuditStore(database)),
        0,
        rotation_period=30 * DAY,
        clock=clock,
    )
    oldest, _ = await keys.create("oldest", "alice", Role.USER)
    clock.now += DAY
    await keys.create("old", "bob", Role.USER)
    rotated, _ = await keys.create("rotated", "alice", Role.USER)
    revoked, _ = await keys.create("revoked", "alice", Role.USER)
    await keys.create("expired", "alice", Role.USER, expires_at=clock.now + 40 * DAY)
    await keys.revoke(revoked.id)
    clock.now += 30 * DAY
    await keys.rotate(rotated.id, 3600)  # rotated now: not due, though created long ago
    young, _ = await keys.create("young", "alice", Role.USER)
    clock.now += 10 * DAY  # `expired` has now expired

    due = await admin.due_for_rotation()
    assert [r.name for r in due] == ["oldest", "old"]  # least recently rotated first
    assert [r.name for r in await admin.due_for_rotation(owner="alice")] == ["oldest"]
    assert [r.name for r in await admin.due_for_rotation(limit=1, offset=1)] == ["old"]

    task, _, registry = lifecycle(database, clock, tmp_path, rotation_period=30 * DAY)
    await task.run_once()
    assert registry.get_sample_value("gateway_keys_due_for_rotation") == 2
    await keys.rotate(oldest.id, 0)
    await task.run_once()
    assert registry.get_sample_value("gateway_keys_due_for_rotation") == 1
    assert young.id not in {r.id for r in await admin.due_for_rotation()}


async def test_without_a_rotation_period_nothing_is_due_and_asking_is_a_400(
    database: Database, clock: FakeClock, tmp_path: Path
) -> None:
    store = KeyStore(database)
    admin = KeyAdmin(
        service(database, clock), store, LocalBus(), immediate(AuditStore(database)), 0
    )
    with pytest.raises(BadRequest, match="rotation_period"):
        await admin.due_for_rotation()
    _, _, registry = lifecycle(database, clock, tmp_path)
    assert registry.get_sample_value("gateway_keys_due_for_rotation") is None


async def test_create_through_key_admin_says_never_and_default(
    database: Database, clock: FakeClock
) -> None:
    store = KeyStore(database)
    admin = KeyAdmin(
        service(database, clock, default=DAY), store, LocalBus(), immediate(AuditStore(database)), 0
    )
    default, _ = await admin.create(CLI, "a", "o", Role.USER)
    never, _ = await admin.create(CLI, "b", "o", Role.USER, expires_at=NEVER)
    assert default.expires_at == clock.now + DAY and never.expires_at is None
