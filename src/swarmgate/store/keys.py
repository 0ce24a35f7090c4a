"""API keys in the SQL store: the ``api_keys`` and ``api_key_secrets`` tables, I/O only.

This repository never sees a secret: it stores and finds HMAC hashes computed by
``auth.keys.KeyHasher``. Policy (is this key usable now? what does rotation mean?) lives in
``auth.keys.KeyService``; this module only reads and writes rows.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from swarmgate.store.schema import api_key_secrets, api_keys
from swarmgate.store.sql import Database
from swarmgate.types import Principal, Role

# Advisory lock held by the replica purging old keys on PostgreSQL (fixed, like migrate's).
_PURGE = 0x5357_4B45_5950  # "SWKEYP"


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One API key, without its secret. Times are epoch seconds."""

    id: str
    name: str
    owner: str
    role: Role
    scopes: frozenset[str]
    tier: str
    models: frozenset[str] | None  # None: every model
    created_at: float
    expires_at: float | None = None
    last_used_at: float | None = None
    revoked_at: float | None = None
    # The key's own limits over its tier's, as (field, value) pairs; None: the tier's.
    limits: tuple[tuple[str, Any], ...] | None = None

    def is_active(self, now: float) -> bool:
        """Not revoked and not expired at ``now``."""
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def principal(self) -> Principal:
        return Principal(
            subject=self.owner,
            role=self.role,
            scopes=self.scopes,
            tier=self.tier,
            models=self.models,
            key_id=self.id,
            via="key",
            expires_at=self.expires_at,
            limits=self.limits,
        )


@dataclass(frozen=True, slots=True)
class KeyWithSecret:
    """A key found by one of its secrets' hashes, with that secret's own validity."""

    key: KeyRecord
    hash: str
    prefix: str
    valid_until: float | None  # None: the current secret; else a rotated one in its grace period


def _record(row: sa.RowMapping) -> KeyRecord:
    models = row["models"]
    return KeyRecord(
        id=row["id"],
        name=row["name"],
        owner=row["owner"],
        role=Role(row["role"]),
        scopes=frozenset(row["scopes"]),
        tier=row["tier"],
        models=None if models is None else frozenset(models),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        last_used_at=row["last_used_at"],
        revoked_at=row["revoked_at"],
        limits=limit_pairs(row["limits"]),
    )


def limit_pairs(limits: Mapping[str, Any] | None) -> tuple[tuple[str, Any], ...] | None:
    return tuple(sorted(limits.items())) if limits else None


def record_values(record: KeyRecord) -> dict[str, Any]:
    """A key as a plain mapping: its row, and (plus activity) its admin API view."""
    return {
        "id": record.id,
        "name": record.name,
        "owner": record.owner,
        "role": record.role.value,
        "scopes": sorted(record.scopes),
        "tier": record.tier,
        "models": None if record.models is None else sorted(record.models),
        "created_at": record.created_at,
        "expires_at": record.expires_at,
        "last_used_at": record.last_used_at,
        "revoked_at": record.revoked_at,
        "limits": None if record.limits is None else dict(record.limits),
    }


class KeyStore:
    """Reads and writes API keys and their secret hashes."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, record: KeyRecord, secret_hash: str, prefix: str) -> None:
        """Insert a key and its first secret, atomically."""
        async with self._db.begin() as conn:
            await conn.execute(api_keys.insert().values(record_values(record)))
            await conn.execute(
                api_key_secrets.insert().values(
                    hash=secret_hash,
                    key_id=record.id,
                    prefix=prefix,
                    created_at=record.created_at,
                    valid_until=None,
                )
            )

    async def get(self, key_id: str) -> KeyRecord | None:
        async with self._db.connect() as conn:
            row = (
                (await conn.execute(api_keys.select().where(api_keys.c.id == key_id)))
                .mappings()
                .first()
            )
        return None if row is None else _record(row)

    async def find_by_hash(self, secret_hash: str) -> KeyWithSecret | None:
        query = (
            sa.select(
                api_keys,
                api_key_secrets.c.hash,
                api_key_secrets.c.prefix,
                api_key_secrets.c.valid_until,
            )
            .join(api_key_secrets, api_key_secrets.c.key_id == api_keys.c.id)
            .where(api_key_secrets.c.hash == secret_hash)
        )
        async with self._db.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        if row is None:
            return None
        return KeyWithSecret(
            key=_record(row),
            hash=row["hash"],
            prefix=row["prefix"],
            valid_until=row["valid_until"],
        )

    async def prefixes(self, key_id: str) -> builtins.list[str]:
        """The visible prefixes of a key's secrets, current first (for listings)."""
        query = (
            sa.select(api_key_secrets.c.prefix)
            .where(api_key_secrets.c.key_id == key_id)
            .order_by(api_key_secrets.c.valid_until.is_not(None), api_key_secrets.c.created_at)
        )
        async with self._db.connect() as conn:
            return list((await conn.execute(query)).scalars())

    async def list(
        self,
        owner: str | None = None,
        include_revoked: bool = False,
        limit: int = 50,
        offset: int = 0,
    ) -> builtins.list[KeyRecord]:
        """Keys, oldest first."""
        query = api_keys.select().order_by(api_keys.c.created_at, api_keys.c.id)
        if owner is not None:
            query = query.where(api_keys.c.owner == owner)
        if not include_revoked:
            query = query.where(api_keys.c.revoked_at.is_(None))
        query = query.limit(limit).offset(offset)
        async with self._db.connect() as conn:
            return [_record(row) for row in (await conn.execute(query)).mappings()]

    def _due(self, rotated_before: float, now: float) -> sa.Select[Any]:
        """Active keys whose current secret (the one without an end) was made before
        ``rotated_before``: at creation, or at the key's last rotation."""
        current = api_key_secrets.c
        return (
            sa.select(api_keys)
            .join(api_key_secrets, current.key_id == api_keys.c.id)
            .where(current.valid_until.is_(None), current.created_at <= rotated_before)
            .where(api_keys.c.revoked_at.is_(None))
            .where(sa.or_(api_keys.c.expires_at.is_(None), api_keys.c.expires_at > now))
        )

    async def due_for_rotation(
        self,
        rotated_before: float,
        now: float,
        owner: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> builtins.list[KeyRecord]:
        """Active keys not rotated since ``rotated_before``, least recently rotated first."""
        query = self._due(rotated_before, now).order_by(api_key_secrets.c.created_at, api_keys.c.id)
        if owner is not None:
            query = query.where(api_keys.c.owner == owner)
        query = query.limit(limit).offset(offset)
        async with self._db.connect() as conn:
            return [_record(row) for row in (await conn.execute(query)).mappings()]

    async def count_due_for_rotation(self, rotated_before: float, now: float) -> int:
        query = sa.select(sa.func.count()).select_from(self._due(rotated_before, now).subquery())
        async with self._db.connect() as conn:
            return int(await conn.scalar(query) or 0)

    async def purge(self, ended_before: float) -> builtins.list[str]:
        """Delete the keys revoked or expired before ``ended_before``, with their secrets (the
        foreign key cascades); return their ids. Idempotent: replicas may all run it, and
        concurrent runs delete each key once (the second finds nothing left)."""
        c = api_keys.c
        ended = sa.or_(c.revoked_at <= ended_before, c.expires_at <= ended_before)
        async with self._db.begin() as conn:
            if self._db.dialect == "postgresql":
                # One replica at a time; the others skip this round (SQLite's write transaction
                # already serialises them with BEGIN IMMEDIATE).
                locked = await conn.scalar(sa.select(sa.func.pg_try_advisory_xact_lock(_PURGE)))
                if not locked:
                    return []
            result = await conn.execute(api_keys.delete().where(ended).returning(c.id))
            return sorted(result.scalars())

    async def add_secret(self, key_id: str, secret_hash: str, prefix: str, now: float) -> None:
        async with self._db.begin() as conn:
            await conn.execute(
                api_key_secrets.insert().values(
                    hash=secret_hash, key_id=key_id, prefix=prefix, created_at=now
                )
            )

    async def retire_secrets(self, key_id: str, valid_until: float) -> int:
        """Make every secret of the key that is valid beyond ``valid_until`` end then."""
        async with self._db.begin() as conn:
            return await self._retire(conn, key_id, valid_until)

    async def rotate_secret(
        self, key_id: str, secret_hash: str, prefix: str, now: float, old_valid_until: float
    ) -> None:
        """Retire the key's secrets at ``old_valid_until`` and add a new current one, atomically."""
        async with self._db.begin() as conn:
            await self._retire(conn, key_id, old_valid_until)
            await conn.execute(
                api_key_secrets.insert().values(
                    hash=secret_hash, key_id=key_id, prefix=prefix, created_at=now
                )
            )

    @staticmethod
    async def _retire(conn: AsyncConnection, key_id: str, valid_until: float) -> int:
        column = api_key_secrets.c.valid_until
        result = await conn.execute(
            api_key_secrets.update()
            .where(api_key_secrets.c.key_id == key_id)
            .where(sa.or_(column.is_(None), column > valid_until))
            .values(valid_until=valid_until)
        )
        return int(result.rowcount)

    async def revoke(self, key_id: str, now: float) -> bool:
        """Mark the key revoked (keeping the first revocation time). False if there is no key."""
        async with self._db.begin() as conn:
            await conn.execute(
                api_keys.update()
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            found = await conn.scalar(sa.select(api_keys.c.id).where(api_keys.c.id == key_id))
        return found is not None

    async def set_limits(
        self, key_id: str, tier: str | None, limits: Mapping[str, Any] | None, keep: bool
    ) -> bool:
        """A new tier (None: unchanged) and own limits (``keep``: unchanged; else replaced by
        ``limits``, None clearing them)."""
        values: dict[str, Any] = {}
        if tier is not None:
            values["tier"] = tier
        if not keep:
            values["limits"] = dict(limits) if limits else None
        if not values:
            return await self.get(key_id) is not None
        async with self._db.begin() as conn:
            result = await conn.execute(
                api_keys.update().where(api_keys.c.id == key_id).values(**values)
            )
        return bool(result.rowcount)

    async def set_expiry(self, key_id: str, expires_at: float | None) -> bool:
        """Set (or with None clear) the expiry. False if there is no such key."""
        async with self._db.begin() as conn:
            result = await conn.execute(
                api_keys.update().where(api_keys.c.id == key_id).values(expires_at=expires_at)
            )
        return bool(result.rowcount)

    async def touch(self, last_used: Mapping[str, float]) -> None:
        """Record last-use times in one batch; a time never moves backwards."""
        if not last_used:
            return
        column = api_keys.c.last_used_at
        statement = (
            api_keys.update()
            .where(api_keys.c.id == sa.bindparam("b_id"))
            .where(sa.or_(column.is_(None), column < sa.bindparam("b_ts")))
            .values(last_used_at=sa.bindparam("b_ts"))
        )
        # Sorted so that two replicas flushing at once lock rows in the same order (no deadlock).
        params = [{"b_id": key_id, "b_ts": ts} for key_id, ts in sorted(last_used.items())]
        async with self._db.begin() as conn:
            await conn.execute(statement, params)

    async def count(self) -> int:
        """Every key ever created, revoked ones included."""
        async with self._db.connect() as conn:
            return int(await conn.scalar(sa.select(sa.func.count()).select_from(api_keys)) or 0)
