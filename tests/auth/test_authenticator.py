"""The hot-path authenticator over a real store: cache, invalidation, bounds, failures."""

from __future__ import annotations

import pytest

from swarmgate.auth.audit import AuditLog
from swarmgate.auth.authenticator import KeyAuthenticator
from swarmgate.auth.ip import IPPolicy
from swarmgate.auth.keys import KeyHasher, KeyService
from swarmgate.auth.roles import default_scopes
from swarmgate.config import Audit, Auth, IPProtection
from swarmgate.errors import IPBlocked, ServiceUnavailable, Unauthorized
from swarmgate.observability.metrics import Metrics
from swarmgate.store.audit import AuditStore
from swarmgate.store.keys import KeyStore
from swarmgate.store.sql import Database
from swarmgate.types import Role


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class CountingStore(KeyStore):
    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.lookups = 0

    async def find_by_hash(self, secret_hash: str):  # type: ignore[no-untyped-def]
        self.lookups += 1
        return await super().find_by_hash(secret_hash)


@pytest.fixture
async def setup(database: Database, tmp_path):  # type: ignore[no-untyped-def]
    clock = Clock()
    store = CountingStore(database)
    service = KeyService(store, KeyHasher(b"s" * 32), clock)
    config = Auth(cache_ttl=5, ip=IPProtection(max_failures=3, failure_window=60, block_seconds=30))
    audit = AuditLog(AuditStore(database), Audit(spool_path=str(tmp_path / "spool")), clock)
    auth = KeyAuthenticator(
        config,
        service,
        KeyHasher(b"s" * 32),
        IPPolicy(config.ip, clock),
        audit,
        Metrics(),
        clock=clock,
    )
    return auth, service, store, clock, audit


async def test_a_verified_key_is_served_from_the_cache_without_a_store_query(setup) -> None:  # type: ignore[no-untyped-def]
    auth, service, store, clock, _ = setup
    record, secret = await service.create("k", "alice", Role.USER, default_scopes(Role.USER))
    first = await auth.authenticate(f"Bearer {secret}", "10.0.0.1", None)
    assert first.key_id == record.id and first.role is Role.USER
    for _ in range(50):
        assert await auth.authenticate(f"Bearer {secret}", "10.0.0.1", None) == first
    assert store.lookups == 1
    clock.now += 6  # past cache_ttl: verified again
    await auth.authenticate(f"Bearer {secret}", "10.0.0.1", None)
    assert store.lookups == 2
    assert auth.last_used[record.id] == clock.now


async def test_invalidation_and_expiry_bound_the_cache(setup) -> None:  # type: ignore[no-untyped-def]
    auth, service, _, clock, _ = setup
    record, secret = await service.create("k", "bob", Role.USER, default_scopes(Role.USER))
    await auth.authenticate(f"Bearer {secret}", "10.0.0.2", None)
    await service.revoke(record.id)
    await auth.authenticate(f"Bearer {secret}", "10.0.0.2", None)  # still cached
    auth.invalidate(record.id)
    with pytest.raises(Unauthorized):
        await auth.authenticate(f"Bearer {secret}", "10.0.0.2", None)

    _, short_secret = await service.create(
        "k2", "bob", Role.USER, default_scopes(Role.USER), expires_at=clock.now + 2
    )
    await auth.authenticate(f"Bearer {short_secret}", "10.0.0.2", None)
    clock.now += 2.5  # within cache_ttl, but past the key's expiry
    with pytest.raises(Unauthorized):
        await auth.authenticate(f"Bearer {short_secret}", "10.0.0.2", None)

    rotated, old = await service.create("k3", "bob", Role.USER, default_scopes(Role.USER))
    await auth.authenticate(f"Bearer {old}", "10.0.0.3", None)
    await service.rotate(rotated.id, grace_seconds=1)
    auth.invalidate(rotated.id)
    await auth.authenticate(f"Bearer {old}", "10.0.0.3", None)  # within grace
    clock.now += 1.5  # the cached entry must not outlive the grace
    with pytest.raises(Unauthorized):
        await auth.authenticate(f"Bearer {old}", "10.0.0.3", None)


async def test_failures_are_audited_and_block_the_address(database: Database, setup) -> None:  # type: ignore[no-untyped-def]
    auth, _, _, _, audit = setup
    for header in (None, "Basic abc", "Bearer sk-sg-" + "x" * 43):
        with pytest.raises(Unauthorized):
            await auth.authenticate(header, "10.0.0.9", None)
    with pytest.raises(IPBlocked):
        await auth.authenticate("Bearer sk-sg-whatever", "10.0.0.9", None)
    await audit.flush()
    records, _ = await AuditStore(database).query(limit=100)
    actions = [r.action for r in records]
    assert actions.count("auth.failure") == 3 and actions.count("ip.autoblock") == 1
    assert all(r.client_ip == "10.0.0.9" for r in records)
    assert all("sk-sg-" + "x" * 43 not in str(r.details) for r in records)


async def test_a_dead_store_is_a_503_for_new_keys_while_cached_keys_keep_working(
    database: Database, setup
) -> None:  # type: ignore[no-untyped-def]
    auth, service, _, _, _ = setup
    _, cached = await service.create("k", "carol", Role.USER, default_scopes(Role.USER))
    _, fresh = await service.create("k2", "carol", Role.USER, default_scopes(Role.USER))
    await auth.authenticate(f"Bearer {cached}", "10.0.0.4", None)
    await database.close()
    bad = Database.from_url("postgresql://nobody@127.0.0.1:1/none", connect_timeout=1)
    service._store._db = bad  # the store now points at a database that is not there
    try:
        assert (await auth.authenticate(f"Bearer {cached}", "10.0.0.4", None)).subject == "carol"
        with pytest.raises(ServiceUnavailable):
            await auth.authenticate(f"Bearer {fresh}", "10.0.0.4", None)
    finally:
        await bad.close()
