"""The hot-path authenticator over a real store: cache, invalidation, bounds, failures."""

from __future__ import annotations

import pytest

from swarmgate.auth.audit import AuditLog
from swarmgate.auth.authenticator import KeyAuthenticator
from swarmgate.auth.ip import IPPolicy
from swarmgate.auth.keys import KeyHasher, KeyService
from swarmgate.auth.roles import default_scopes
from swarmgate.config import Audit, Auth, IPProtection
from swarmgate.errors import IPBlocked, ServiceUnavailable, StoreError, Unauthorized
from swarmgate.observability.metrics import Metrics
from swarmgate.store.audit import AuditRecord, AuditStore
from swarmgate.store.keys import KeyStore
from swarmgate.store.migrate import migrate
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


# ---- the store goes away: stale-while-unavailable


class FlakyStore(KeyStore):
    """A real store that can be switched off: then every lookup raises ``StoreError``."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.down = False
        self.lookups = 0

    async def find_by_hash(self, secret_hash: str):  # type: ignore[no-untyped-def]
        self.lookups += 1
        if self.down:
            raise StoreError("database error: OperationalError: connection refused")
        return await super().find_by_hash(secret_hash)


class Collected:
    """An audit sink that keeps what it is given."""

    def __init__(self) -> None:
        self.records: list[AuditRecord] = []

    async def insert_many(self, records) -> None:  # type: ignore[no-untyped-def]
        self.records.extend(records)


@pytest.fixture
async def outage(tmp_path):  # type: ignore[no-untyped-def]
    db = Database.from_url(f"sqlite:///{tmp_path / 'keys.db'}")
    await migrate(db)
    clock = Clock()
    store = FlakyStore(db)
    service = KeyService(store, KeyHasher(b"s" * 32), clock)
    config = Auth(
        cache_ttl=5,
        stale_max_age=60,
        ip=IPProtection(max_failures=3, failure_window=60, block_seconds=30),
    )
    sink = Collected()
    audit = AuditLog(sink, Audit(spool_path=str(tmp_path / "spool")), clock)
    auth = KeyAuthenticator(
        config,
        service,
        KeyHasher(b"s" * 32),
        IPPolicy(config.ip, clock),
        audit,
        Metrics(),
        clock=clock,
    )
    try:
        yield auth, service, store, clock, audit, sink
    finally:
        await db.close()


async def test_a_verified_key_outlives_its_ttl_while_the_store_is_down(outage) -> None:  # type: ignore[no-untyped-def]
    auth, service, store, clock, _, _ = outage
    record, secret = await service.create("k", "dora", Role.USER, default_scopes(Role.USER))
    first = await auth.authenticate(f"Bearer {secret}", "10.0.1.1", None)
    store.down = True
    lookups = store.lookups
    for _ in range(30):  # 30 s of an outage, one request a second: none refused
        clock.now += 1
        assert await auth.authenticate(f"Bearer {secret}", "10.0.1.1", None) == first
    # The store is tried again at most once per cache_ttl, not on every request.
    assert store.lookups - lookups <= 30 / 5 + 1
    assert auth.last_used[record.id] == clock.now
    store.down = False  # back: verified afresh, and the stale age starts over
    clock.now += 5
    assert await auth.authenticate(f"Bearer {secret}", "10.0.1.1", None) == first
    store.down = True
    clock.now += 59
    assert await auth.authenticate(f"Bearer {secret}", "10.0.1.1", None) == first
    clock.now += 2  # more than stale_max_age since it was last verified
    with pytest.raises(ServiceUnavailable) as info:
        await auth.authenticate(f"Bearer {secret}", "10.0.1.1", None)
    assert int(info.value.headers["Retry-After"]) >= 1


async def test_a_revocation_event_drops_a_stale_principal(outage) -> None:  # type: ignore[no-untyped-def]
    auth, service, store, clock, _, _ = outage
    record, secret = await service.create("k", "erin", Role.USER, default_scopes(Role.USER))
    await auth.authenticate(f"Bearer {secret}", "10.0.1.2", None)
    store.down = True
    clock.now += 6
    await auth.authenticate(f"Bearer {secret}", "10.0.1.2", None)  # stale, still served
    auth.invalidate(record.id)  # the event arrives over Redis while the database is down
    with pytest.raises(ServiceUnavailable):  # cannot be checked: never a 401 for a valid key
        await auth.authenticate(f"Bearer {secret}", "10.0.1.2", None)


async def test_a_stale_principal_never_outlives_its_key(outage) -> None:  # type: ignore[no-untyped-def]
    auth, service, store, clock, _, _ = outage
    _, secret = await service.create(
        "k", "finn", Role.USER, default_scopes(Role.USER), expires_at=clock.now + 8
    )
    await auth.authenticate(f"Bearer {secret}", "10.0.1.3", None)
    store.down = True
    clock.now += 6
    await auth.authenticate(f"Bearer {secret}", "10.0.1.3", None)
    clock.now += 3  # past the key's expiry
    with pytest.raises(ServiceUnavailable):
        await auth.authenticate(f"Bearer {secret}", "10.0.1.3", None)


async def test_unverifiable_keys_are_503_and_audited_and_malformed_keys_stay_401(outage) -> None:  # type: ignore[no-untyped-def]
    auth, _, store, _, audit, sink = outage
    store.down = True
    unknown = "sk-sg-" + "u" * 43
    for n in range(5):  # more than max_failures: an outage must not block the caller
        with pytest.raises(ServiceUnavailable) as info:
            await auth.authenticate(f"Bearer {unknown}", "10.0.1.4", None, f"rid-u{n}")
        assert int(info.value.headers["Retry-After"]) >= 1
    with pytest.raises(Unauthorized):
        await auth.authenticate("Basic abc", "10.0.1.4", None, "rid-m")
    await audit.flush()
    failures = [r for r in sink.records if r.action == "auth.failure"]
    assert [r.request_id for r in failures] == [f"rid-u{n}" for n in range(5)] + ["rid-m"]
    assert [r.details["reason"] for r in failures] == ["store_unavailable"] * 5 + ["malformed"]
    assert [r.outcome for r in failures] == ["unavailable"] * 5 + ["denied"]
    assert all(r.client_ip == "10.0.1.4" for r in failures)
    assert not any(r.action == "ip.autoblock" for r in sink.records)
    assert all(unknown not in str(r) for r in sink.records)
