"""Key administration, the one service behind the admin API and the CLI, on a real store.

Each action must change the key, publish what replicas must drop (rotate, revoke, expire) before
auditing it, and write its audit record through the trail it was given: queued on the
write-behind ``AuditLog`` (admin API) or stored at once (CLI).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from swarmgate.auth.audit import AuditLog
from swarmgate.auth.keyadmin import Actor, KeyAdmin, immediate, queued
from swarmgate.auth.keys import KeyHasher, KeyService
from swarmgate.config import Audit
from swarmgate.errors import BadRequest, NotFound
from swarmgate.store import names
from swarmgate.store.audit import AuditStore
from swarmgate.store.events import LocalBus
from swarmgate.store.keys import KeyStore
from swarmgate.store.sql import Database
from swarmgate.types import Role

ADMIN = Actor("key_admin", "10.0.0.9", "req-1")


class Journal:
    """What happened, in order: events published and audit records written."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, ...]] = []
        self.bus = LocalBus()
        self.bus.subscribe(names.KEY_EVENTS, lambda key_id: self.entries.append(("event", key_id)))

    async def trail(
        self, actor: Actor, action: str, target: str, details: Mapping[str, Any]
    ) -> None:
        self.entries.append(("audit", actor.name, action, target, repr(dict(details))))


@pytest.fixture
def journal() -> Journal:
    return Journal()


@pytest.fixture
def admin(database: Database, journal: Journal) -> KeyAdmin:
    store = KeyStore(database)
    return KeyAdmin(KeyService(store, KeyHasher(b"k" * 32)), store, journal.bus, journal.trail, 60)


async def test_create_audits_without_publishing(admin: KeyAdmin, journal: Journal) -> None:
    record, secret = await admin.create(ADMIN, "web", "alice", "user", tier="pro")
    assert secret.startswith("sk-sg-") and record.role is Role.USER
    assert "inference:text" in record.scopes  # the role's default scopes
    assert journal.entries == [
        ("audit", "key_admin", "key.create", record.id, repr({"role": "user", "tier": "pro"}))
    ]
    with pytest.raises(BadRequest):
        await admin.create(ADMIN, "web", "alice", "user", scopes=["no-such-scope"])


async def test_changes_are_published_before_they_are_audited(
    admin: KeyAdmin, journal: Journal
) -> None:
    record, old = await admin.create(ADMIN, "web", "alice", "user")
    journal.entries.clear()
    _, new, grace = await admin.rotate(ADMIN, record.id)
    assert grace == 60 and new != old  # the configured rotation grace by default
    assert (await admin.rotate(ADMIN, record.id, 0))[2] == 0
    expired = await admin.expire(ADMIN, record.id, 4e9)
    revoked = await admin.revoke(ADMIN, record.id)
    assert expired.expires_at == 4e9 and revoked.revoked_at is not None
    k = record.id
    assert journal.entries == [
        ("event", k),
        ("audit", "key_admin", "key.rotate", k, repr({"grace_seconds": 60})),
        ("event", k),
        ("audit", "key_admin", "key.rotate", k, repr({"grace_seconds": 0})),
        ("event", k),
        ("audit", "key_admin", "key.expire", k, repr({"expires_at": 4e9})),
        ("event", k),
        ("audit", "key_admin", "key.revoke", k, repr({})),
    ]


async def test_a_failed_change_is_neither_published_nor_audited(
    admin: KeyAdmin, journal: Journal
) -> None:
    for change in (
        admin.rotate(ADMIN, "key_missing"),
        admin.revoke(ADMIN, "key_missing"),
        admin.expire(ADMIN, "key_missing"),
        admin.show("key_missing"),
    ):
        with pytest.raises(NotFound):
            await change
    assert journal.entries == []


async def test_list_and_show_never_reveal_secrets(admin: KeyAdmin) -> None:
    a, secret = await admin.create(ADMIN, "a", "alice", "user")
    b, _ = await admin.create(ADMIN, "b", "bob", "user")
    await admin.revoke(ADMIN, b.id)
    assert [r.id for r in await admin.list()] == [a.id]
    assert [r.id for r in await admin.list(include_revoked=True)] == [a.id, b.id]
    assert [r.id for r in await admin.list(owner="bob", include_revoked=True)] == [b.id]
    shown, prefixes = await admin.show(a.id)
    assert shown == a and prefixes == [secret[:12]]


async def test_the_queued_trail_goes_through_the_write_behind_log(
    database: Database, tmp_path: Path
) -> None:
    audit_store = AuditStore(database)
    log = AuditLog(audit_store, Audit(spool_path=str(tmp_path / "spool")))
    store = KeyStore(database)
    admin = KeyAdmin(KeyService(store, KeyHasher(b"k" * 32)), store, LocalBus(), queued(log), 1)
    record, _ = await admin.create(ADMIN, "web", "alice", "user")
    assert log.pending == 1 and (await audit_store.query())[0] == []  # not stored yet
    await log.flush()
    [stored] = (await audit_store.query())[0]
    assert (stored.action, stored.actor, stored.target) == ("key.create", "key_admin", record.id)
    assert (stored.client_ip, stored.request_id) == ("10.0.0.9", "req-1")


async def test_the_immediate_trail_is_stored_before_it_returns(database: Database) -> None:
    audit_store = AuditStore(database)
    store = KeyStore(database)
    trail = immediate(audit_store, lambda: 1234.5)
    admin = KeyAdmin(KeyService(store, KeyHasher(b"k" * 32)), store, LocalBus(), trail, 1)
    record, _ = await admin.create(Actor("cli"), "web", "alice", "admin")
    [stored] = (await audit_store.query())[0]
    assert (stored.action, stored.actor, stored.target, stored.ts) == (
        "key.create",
        "cli",
        record.id,
        1234.5,
    )
    assert stored.details == {"role": "admin", "tier": "default"}


async def test_list_refuses_integers_beyond_the_database(admin: KeyAdmin) -> None:
    for limit, offset in ((1, 2**63), (1, -1), (0, 0), (2**63, 0)):
        with pytest.raises(BadRequest):
            await admin.list(limit=limit, offset=offset)
    assert await admin.list(limit=2**63 - 1, offset=2**63 - 1) == []


async def test_set_limits_merges_validates_publishes_and_audits(
    database: Database, journal: Journal
) -> None:
    store = KeyStore(database)
    admin = KeyAdmin(
        KeyService(store, KeyHasher(b"k" * 32)),
        store,
        journal.bus,
        journal.trail,
        60,
        tiers=["default", "free", "pro"],
    )
    record, _ = await admin.create(ADMIN, "web", "alice", "user", tier="free")
    journal.entries.clear()
    updated = await admin.set_limits(ADMIN, record.id, "pro", {"rpm": 50, "tpm": 1000})
    assert updated.tier == "pro" and dict(updated.limits or ()) == {"rpm": 50, "tpm": 1000}
    assert updated.principal().limits == (("rpm", 50), ("tpm", 1000))
    merged = await admin.set_limits(ADMIN, record.id, limits={"tpm": None, "concurrent": 3})
    assert dict(merged.limits or ()) == {"rpm": 50, "concurrent": 3}
    assert journal.entries[0] == ("event", record.id)  # replicas drop the cached principal
    assert journal.entries[1][2] == "key.update"
    cleared = await admin.set_limits(ADMIN, record.id, replace_limits=True)
    assert cleared.limits is None and cleared.tier == "pro"
    with pytest.raises(BadRequest, match="no tier 'gold'"):
        await admin.set_limits(ADMIN, record.id, "gold")
    with pytest.raises(BadRequest, match="rpm"):
        await admin.set_limits(ADMIN, record.id, limits={"rpm": 0})
    with pytest.raises(BadRequest, match="rpx"):
        await admin.set_limits(ADMIN, record.id, limits={"rpx": 1})
    with pytest.raises(BadRequest, match="no tier"):
        await admin.create(ADMIN, "web", "alice", "user", tier="gold")
    with pytest.raises(NotFound):
        await admin.set_limits(ADMIN, "no-such-key", "pro")
