"""KeyStore: rows in, rows out, on both engines."""

from __future__ import annotations

import pytest

from swarmgate.errors import StoreError
from swarmgate.store.keys import KeyRecord, KeyStore
from swarmgate.store.sql import Database
from swarmgate.types import Role


def _record(key_id: str, owner: str = "alice", created_at: float = 1000.0) -> KeyRecord:
    return KeyRecord(
        id=key_id,
        name=f"{key_id} name",
        owner=owner,
        role=Role.USER,
        scopes=frozenset({"models:read", "inference:text"}),
        tier="pro",
        models=frozenset({"llama", "qwen"}),
        created_at=created_at,
    )


def _hash(n: int) -> str:
    return f"{n:064x}"


@pytest.fixture
def keys(database: Database) -> KeyStore:
    return KeyStore(database)


async def test_create_then_get_round_trips_every_field(keys: KeyStore) -> None:
    record = _record("key_a")
    await keys.create(record, _hash(1), "sk-sg-aaaaaa")
    assert await keys.get("key_a") == record
    assert await keys.get("key_missing") is None
    assert await keys.count() == 1


async def test_all_models_is_stored_as_null(keys: KeyStore) -> None:
    record = KeyRecord(
        id="key_b",
        name="b",
        owner="bob",
        role=Role.ADMIN,
        scopes=frozenset({"admin"}),
        tier="default",
        models=None,
        created_at=5.5,
        expires_at=99.25,
    )
    await keys.create(record, _hash(2), "sk-sg-bbbbbb")
    stored = await keys.get("key_b")
    assert stored == record
    assert stored is not None and stored.principal().allows_model("anything")


async def test_find_by_hash_joins_the_secret(keys: KeyStore) -> None:
    await keys.create(_record("key_a"), _hash(1), "sk-sg-aaaaaa")
    found = await keys.find_by_hash(_hash(1))
    assert found is not None
    assert found.key.id == "key_a"
    assert (found.hash, found.prefix, found.valid_until) == (_hash(1), "sk-sg-aaaaaa", None)
    assert await keys.find_by_hash(_hash(2)) is None


async def test_a_duplicate_secret_hash_is_a_store_error(keys: KeyStore) -> None:
    await keys.create(_record("key_a"), _hash(1), "sk-sg-aaaaaa")
    with pytest.raises(StoreError):
        await keys.create(_record("key_b"), _hash(1), "sk-sg-aaaaaa")
    # The failed create left no half-written key behind.
    assert await keys.get("key_b") is None


async def test_list_filters_and_pages(keys: KeyStore) -> None:
    for i in range(5):
        owner = "alice" if i % 2 == 0 else "bob"
        await keys.create(_record(f"key_{i}", owner, created_at=100.0 + i), _hash(i), "sk-sg-x")
    await keys.revoke("key_2", now=200.0)

    assert [k.id for k in await keys.list()] == ["key_0", "key_1", "key_3", "key_4"]
    assert [k.id for k in await keys.list(include_revoked=True)] == [f"key_{i}" for i in range(5)]
    assert [k.id for k in await keys.list(owner="alice")] == ["key_0", "key_4"]
    assert [k.id for k in await keys.list(limit=2, offset=1)] == ["key_1", "key_3"]
    assert await keys.count() == 5


async def test_revoke_keeps_the_first_time(keys: KeyStore) -> None:
    await keys.create(_record("key_a"), _hash(1), "sk-sg-aaaaaa")
    assert await keys.revoke("key_a", now=10.0) is True
    assert await keys.revoke("key_a", now=20.0) is True
    stored = await keys.get("key_a")
    assert stored is not None and stored.revoked_at == 10.0
    assert await keys.revoke("key_missing", now=10.0) is False


async def test_set_expiry(keys: KeyStore) -> None:
    await keys.create(_record("key_a"), _hash(1), "sk-sg-aaaaaa")
    assert await keys.set_expiry("key_a", 500.0) is True
    stored = await keys.get("key_a")
    assert stored is not None and stored.expires_at == 500.0
    assert not stored.is_active(500.0) and stored.is_active(499.0)
    assert await keys.set_expiry("key_a", None) is True
    stored = await keys.get("key_a")
    assert stored is not None and stored.expires_at is None
    assert await keys.set_expiry("key_missing", 1.0) is False


async def test_secrets_retire_and_rotate(keys: KeyStore) -> None:
    await keys.create(_record("key_a"), _hash(1), "sk-sg-first1")
    await keys.add_secret("key_a", _hash(2), "sk-sg-second", now=1100.0)
    assert await keys.retire_secrets("key_a", valid_until=2000.0) == 2
    # Retiring later than a secret already ends never extends it.
    assert await keys.retire_secrets("key_a", valid_until=3000.0) == 0
    await keys.rotate_secret("key_a", _hash(3), "sk-sg-third3", now=1200.0, old_valid_until=1500.0)

    ends = {}
    for n in (1, 2, 3):
        found = await keys.find_by_hash(_hash(n))
        assert found is not None and found.key.id == "key_a"
        ends[n] = found.valid_until
    assert ends == {1: 1500.0, 2: 1500.0, 3: None}
    assert await keys.prefixes("key_a") == ["sk-sg-third3", "sk-sg-first1", "sk-sg-second"]


async def test_touch_is_batched_and_never_moves_backwards(keys: KeyStore) -> None:
    for i in range(3):
        await keys.create(_record(f"key_{i}"), _hash(i), "sk-sg-x")
    await keys.touch({"key_0": 50.0, "key_1": 60.0, "key_unknown": 70.0})
    await keys.touch({"key_0": 40.0, "key_1": 65.0})
    await keys.touch({})
    seen = {k.id: k.last_used_at for k in await keys.list()}
    assert seen == {"key_0": 50.0, "key_1": 65.0, "key_2": None}
