"""The key service: secrets, hashing, rotation with grace, revocation, expiry, bootstrap.

Runs on both engines through the ``database`` fixture; time is an injected clock.
"""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from swarmgate.auth.keys import (
    KeyHasher,
    KeyService,
    generate_secret,
    load_or_create_server_secret,
)
from swarmgate.auth.roles import ALL_SCOPES, default_scopes
from swarmgate.errors import BadRequest, ConfigError, NotFound
from swarmgate.store.keys import KeyStore
from swarmgate.store.schema import metadata
from swarmgate.store.sql import Database
from swarmgate.types import Role

ENV_KEY = "sk-sg-" + "E" * 40


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def service(database: Database, clock: FakeClock) -> KeyService:
    return KeyService(KeyStore(database), KeyHasher(b"k" * 32), clock)


def test_secrets_are_long_random_and_recognisable() -> None:
    secrets = {generate_secret() for _ in range(100)}
    assert len(secrets) == 100
    for secret in secrets:
        assert secret.startswith("sk-sg-")
        assert len(secret) - len("sk-sg-") >= 43  # 256 bits in URL-safe base64


def test_hashes_depend_on_the_server_secret() -> None:
    key = generate_secret()
    a, b = KeyHasher(b"a" * 32), KeyHasher(b"b" * 32)
    assert a.hash(key) == a.hash(key)
    assert a.hash(key) != b.hash(key)
    assert len(a.hash(key)) == 64 and key not in a.hash(key)
    assert a.prefix(key) == key[:12]
    assert a.matches(key, a.hash(key)) and not a.matches(key, b.hash(key))
    with pytest.raises(ConfigError):
        KeyHasher(b"short")


async def test_created_key_is_found_by_its_secret(service: KeyService) -> None:
    record, secret = await service.create(
        "ci", "alice", Role.USER, ["models:read"], tier="pro", models=["llama"]
    )
    found = await service.lookup(secret)
    assert found == record
    assert found.scopes == frozenset({"models:read"})
    assert found.principal().allows_model("llama") and not found.principal().allows_model("qwen")
    assert await service.lookup(generate_secret()) is None
    assert await service.lookup(secret[:-1]) is None
    assert await service.lookup("Bearer " + secret) is None
    assert await service.lookup(secret + "x" * 300) is None


async def test_scopes_default_to_the_role_and_are_validated(service: KeyService) -> None:
    record, _ = await service.create("app", "bob", "power_user")
    assert record.role is Role.POWER_USER
    assert record.scopes == default_scopes(Role.POWER_USER)
    with pytest.raises(BadRequest):
        await service.create("app", "bob", Role.USER, ["models:write"])
    with pytest.raises(BadRequest):
        await service.create("app", "bob", "emperor")
    with pytest.raises(BadRequest):
        await service.create(" ", "bob", Role.USER)


async def test_rotation_keeps_the_old_secret_for_the_grace_period(
    service: KeyService, clock: FakeClock
) -> None:
    record, old = await service.create("ci", "alice", Role.USER)
    _, new = await service.rotate(record.id, grace_seconds=60)
    assert new != old
    clock.now += 59
    assert await service.lookup(old) == record
    assert await service.lookup(new) == record
    clock.now += 1
    assert await service.lookup(old) is None
    assert await service.lookup(new) == record

    # A second rotation retires the second secret, and never revives the first.
    _, newest = await service.rotate(record.id, grace_seconds=3600)
    assert await service.lookup(new) == record
    assert await service.lookup(old) is None
    assert await service.lookup(newest) == record


async def test_rotation_without_grace_cuts_over_at_once(service: KeyService) -> None:
    record, old = await service.create("ci", "alice", Role.USER)
    _, new = await service.rotate(record.id, grace_seconds=0)
    assert await service.lookup(old) is None
    assert await service.lookup(new) == record
    with pytest.raises(NotFound):
        await service.rotate("key_missing", 0)
    with pytest.raises(BadRequest):
        await service.rotate(record.id, -1)


async def test_revocation_ends_every_secret(service: KeyService, clock: FakeClock) -> None:
    record, old = await service.create("ci", "alice", Role.USER)
    _, new = await service.rotate(record.id, grace_seconds=3600)
    revoked = await service.revoke(record.id)
    assert revoked.revoked_at == clock.now
    assert await service.lookup(old) is None
    assert await service.lookup(new) is None
    with pytest.raises(BadRequest):
        await service.rotate(record.id, 0)
    with pytest.raises(NotFound):
        await service.revoke("key_missing")


async def test_expiry(service: KeyService, clock: FakeClock) -> None:
    record, secret = await service.create("ci", "alice", Role.USER, expires_at=clock.now + 10)
    assert await service.lookup(secret) == record
    clock.now += 10
    assert await service.lookup(secret) is None

    record, secret = await service.create("ci", "alice", Role.USER)
    expiring = await service.expire(record.id, at=clock.now + 5)
    assert expiring.expires_at == clock.now + 5
    assert await service.lookup(secret) is not None
    await service.expire(record.id)
    assert await service.lookup(secret) is None
    with pytest.raises(NotFound):
        await service.expire("key_missing")
    with pytest.raises(BadRequest):
        await service.create("ci", "alice", Role.USER, expires_at=clock.now - 1)


async def test_bootstrap_creates_one_admin_key_on_an_empty_store(service: KeyService) -> None:
    secret = await service.bootstrap_admin(None)
    assert secret is not None
    admin = await service.lookup(secret)
    assert admin is not None
    assert (admin.name, admin.role, admin.scopes) == ("bootstrap-admin", Role.ADMIN, ALL_SCOPES)
    assert await service.bootstrap_admin(None) is None


async def test_bootstrap_uses_the_configured_admin_key(service: KeyService) -> None:
    assert await service.bootstrap_admin(ENV_KEY) == ENV_KEY
    admin = await service.lookup(ENV_KEY)
    assert admin is not None and admin.role is Role.ADMIN
    assert await service.bootstrap_admin(ENV_KEY) is None
    assert await service.bootstrap_admin(None) is None


async def test_a_new_admin_key_recovers_a_store_that_has_keys(service: KeyService) -> None:
    await service.create("ci", "alice", Role.USER)
    assert await service.lookup(ENV_KEY) is None
    assert await service.bootstrap_admin(ENV_KEY) == ENV_KEY
    admin = await service.lookup(ENV_KEY)
    assert admin is not None and admin.role is Role.ADMIN

    # Revoking the recovery key sticks across restarts; a new value recovers again.
    await service.revoke(admin.id)
    assert await service.bootstrap_admin(ENV_KEY) is None
    assert await service.lookup(ENV_KEY) is None
    other = "sk-sg-" + "F" * 40
    assert await service.bootstrap_admin(other) == other
    assert await service.lookup(other) is not None


@pytest.mark.parametrize("bad", ["E" * 46, "sk-sg-tooshort", "sk-sg-" + "x" * 31])
async def test_a_malformed_admin_key_is_a_config_error(service: KeyService, bad: str) -> None:
    with pytest.raises(ConfigError):
        await service.bootstrap_admin(bad)


async def test_secrets_are_never_stored_in_plain_text(
    service: KeyService, database: Database
) -> None:
    assert await service.bootstrap_admin(ENV_KEY) == ENV_KEY
    shown = [ENV_KEY]
    record, secret = await service.create("ci", "alice", Role.USER)
    shown.append(secret)
    shown.append((await service.rotate(record.id, 60))[1])
    async with database.connect() as conn:
        dump: list[str] = []
        for table in [*metadata.tables, "alembic_version"]:
            rows = await conn.execute(sa.text(f"SELECT * FROM {table}"))
            dump.extend(repr(tuple(row)) for row in rows)
    text = "\n".join(dump)
    assert "sk-sg-" in text  # the visible prefixes are there, so the scan reads real rows
    for secret in shown:
        assert secret not in text
        assert secret[12:] not in text  # not even the part after the visible prefix


def test_server_secret_from_configuration(tmp_path: Path) -> None:
    value = "c" * 32
    assert load_or_create_server_secret(value, tmp_path / "unused") == value.encode()
    assert not (tmp_path / "unused").exists()
    with pytest.raises(ConfigError):
        load_or_create_server_secret("too short", tmp_path / "unused")


def test_server_secret_file_is_created_once_and_private(tmp_path: Path) -> None:
    path = tmp_path / "state" / "server.secret"
    first = load_or_create_server_secret(None, path)
    assert len(first) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_server_secret(None, path) == first
    assert [p.name for p in path.parent.iterdir()] == ["server.secret"]


def test_concurrent_creators_agree_on_one_secret(tmp_path: Path) -> None:
    path = tmp_path / "server.secret"
    results: list[bytes] = []
    barrier = threading.Barrier(8)

    def create() -> None:
        barrier.wait()
        results.append(load_or_create_server_secret(None, path))

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8 and len(set(results)) == 1
    assert path.read_bytes() == results[0]


def test_a_truncated_secret_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "server.secret"
    path.write_bytes(b"abc")
    with pytest.raises(ConfigError):
        load_or_create_server_secret(None, path)


@pytest.mark.parametrize("at", [float("nan"), float("inf"), 1e308, 1_000_000.0 + 11 * 365 * 86400])
async def test_an_expiry_is_a_finite_time_within_ten_years(
    service: KeyService, clock: FakeClock, at: float
) -> None:
    with pytest.raises(BadRequest) as caught:
        await service.create("app", "bob", Role.USER, expires_at=at)
    assert caught.value.param == "expires_at"
    record, _ = await service.create(
        "app", "bob", Role.USER, expires_at=clock.now + 9 * 365 * 86400
    )
    with pytest.raises(BadRequest):
        await service.rotate(record.id, at - clock.now)
    assert (await service.expire(record.id, clock.now + 60)).expires_at == clock.now + 60


@pytest.mark.parametrize("at", [float("nan"), float("inf"), 1e308, -1.0])
async def test_a_later_expiry_is_a_time_a_calendar_can_show(service: KeyService, at: float) -> None:
    record, _ = await service.create("app", "bob", Role.USER)
    with pytest.raises(BadRequest) as caught:
        await service.expire(record.id, at)
    assert caught.value.param == "at"
    assert (await service.expire(record.id, 253402300799.0)).expires_at == 253402300799.0
