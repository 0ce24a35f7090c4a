"""``swarmgate keys ...`` and ``swarmgate migrate``: operating on the store from a shell.

The commands talk to the same SQL store as the running gateways; a key change is published on
Redis (when configured) so that every replica drops its cached principal at once, and otherwise
reaches them within ``auth.cache_ttl`` seconds.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from swarmgate.api.admin import key_view
from swarmgate.auth.keys import KeyHasher, KeyService, load_or_create_server_secret
from swarmgate.auth.roles import default_scopes, parse_role, parse_scopes
from swarmgate.auth.security import secret_path
from swarmgate.config import Settings, load_settings, parse_duration
from swarmgate.errors import ConfigError, GatewayError, StoreError
from swarmgate.store import names
from swarmgate.store.audit import AuditRecord, AuditStore
from swarmgate.store.events import RedisBus
from swarmgate.store.keys import KeyStore
from swarmgate.store.migrate import current_revision, migrate
from swarmgate.store.sql import Database

T = TypeVar("T")
CONFIG = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="SWARMGATE_CONFIG",
    default="swarmgate.yaml",
    show_default=True,
    help="The gateway's configuration file (for the store URL and the server secret).",
)


@dataclass
class Operator:
    settings: Settings
    db: Database
    store: KeyStore
    keys: KeyService
    audit: AuditStore

    async def record(self, action: str, target: str, **details: Any) -> None:
        await self.audit.insert_many(
            [
                AuditRecord(
                    action=action, ts=time.time(), actor="cli", target=target, details=details
                )
            ]
        )

    async def publish(self, key_id: str) -> None:
        if self.settings.redis.url:
            bus = RedisBus(self.settings.redis.url)
            try:
                await bus.publish(names.KEY_EVENTS, key_id)
            finally:
                await bus.close()


@asynccontextmanager
async def operator(config_path: str) -> AsyncIterator[Operator]:
    settings = load_settings(config_path)
    db = Database.from_url(settings.store.url)
    try:
        if settings.store.migrate_on_start:
            await migrate(db)
        store = KeyStore(db)
        hasher = KeyHasher(
            load_or_create_server_secret(settings.auth.secret, secret_path(settings))
        )
        if await store.count() == 0:
            # Most likely a configuration that points at another store than the gateway's.
            click.echo(
                f"swarmgate: note: the store at {db.url} holds no keys yet; is it the one your "
                "gateway uses (same --config, same SWARMGATE_STORE__URL)?",
                err=True,
            )
        yield Operator(settings, db, store, KeyService(store, hasher), AuditStore(db))
    finally:
        await db.close()


def run(config_path: str, work: Callable[[Operator], Awaitable[T]]) -> T:
    async def main() -> T:
        async with operator(config_path) as op:
            return await work(op)

    try:
        return asyncio.run(main())
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(f"swarmgate: {problem}", err=True)
        sys.exit(2)
    except (GatewayError, StoreError, ValueError) as exc:
        click.echo(f"swarmgate: {exc}", err=True)
        sys.exit(1)


def emit(data: dict[str, Any]) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


@click.group()
def keys() -> None:
    """Create, list, show, rotate, revoke and expire API keys."""


@keys.command("create")
@CONFIG
@click.option("--name", default=None, help="A label for the key (default: owner-role).")
@click.option("--owner", default="default", show_default=True, help="Who the key belongs to.")
@click.option(
    "--role", default="user", show_default=True, help="guest, user, power_user, admin or system."
)
@click.option("--scopes", default=None, help="Comma-separated scopes (default: the role's).")
@click.option("--tier", default="default", show_default=True, help="Rate-limit tier.")
@click.option("--models", default=None, help="Comma-separated allowed models (default: all).")
@click.option("--expires", default=None, help="Lifetime, e.g. 30d, 12h (default: never).")
def create(
    config_path: str,
    name: str | None,
    owner: str,
    role: str,
    scopes: str | None,
    tier: str,
    models: str | None,
    expires: str | None,
) -> None:
    """Create a key; its secret is printed once and cannot be shown again."""
    try:
        the_role = parse_role(role)
        the_scopes = default_scopes(the_role) if scopes is None else parse_scopes(scopes.split(","))
        expires_at = None if expires is None else time.time() + parse_duration(expires)
    except ValueError as exc:
        click.echo(f"swarmgate: {exc}", err=True)
        sys.exit(2)
    allowed = None if models is None else [m.strip() for m in models.split(",") if m.strip()]

    async def work(op: Operator) -> dict[str, Any]:
        record, secret = await op.keys.create(
            name or f"{owner}-{the_role}", owner, the_role, the_scopes, tier, allowed, expires_at
        )
        await op.record("key.create", record.id, role=str(the_role), tier=tier)
        return {"key": key_view(record), "secret": secret}

    emit(run(config_path, work))


@keys.command("list")
@CONFIG
@click.option("--owner", default=None, help="Only this owner's keys.")
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked keys.")
@click.option("--limit", default=100, show_default=True)
@click.option("--offset", default=0, show_default=True)
def list_keys(
    config_path: str, owner: str | None, include_revoked: bool, limit: int, offset: int
) -> None:
    """List keys (never their secrets)."""

    async def work(op: Operator) -> dict[str, Any]:
        records = await op.store.list(owner, include_revoked, limit, offset)
        return {"data": [key_view(r) for r in records]}

    emit(run(config_path, work))


@keys.command("show")
@CONFIG
@click.argument("key_id")
def show(config_path: str, key_id: str) -> None:
    """Show one key and the visible prefixes of its secrets."""

    async def work(op: Operator) -> dict[str, Any]:
        record = await op.store.get(key_id)
        if record is None:
            raise ValueError(f"no API key {key_id!r}")
        return key_view(record, await op.store.prefixes(key_id))

    emit(run(config_path, work))


@keys.command("rotate")
@CONFIG
@click.argument("key_id")
@click.option(
    "--grace",
    default=None,
    help="How long the old secret keeps working (default: auth.rotation_grace).",
)
def rotate(config_path: str, key_id: str, grace: str | None) -> None:
    """Give a key a new secret; the old one keeps working for the grace period."""

    async def work(op: Operator) -> dict[str, Any]:
        seconds = (
            op.settings.auth.rotation_grace
            if grace is None
            else parse_duration(grace, allow_zero=True)
        )
        record, secret = await op.keys.rotate(key_id, seconds)
        await op.publish(key_id)
        await op.record("key.rotate", key_id, grace_seconds=seconds)
        return {"key": key_view(record), "secret": secret, "old_secret_valid_for": seconds}

    emit(run(config_path, work))


@keys.command("revoke")
@CONFIG
@click.argument("key_id")
def revoke(config_path: str, key_id: str) -> None:
    """Revoke a key at once."""

    async def work(op: Operator) -> dict[str, Any]:
        record = await op.keys.revoke(key_id)
        await op.publish(key_id)
        await op.record("key.revoke", key_id)
        return key_view(record)

    emit(run(config_path, work))


@keys.command("expire")
@CONFIG
@click.argument("key_id")
@click.option("--in", "after", default=None, help="Expire after this long (default: now).")
def expire(config_path: str, key_id: str, after: str | None) -> None:
    """Make a key expire now or after a duration."""

    async def work(op: Operator) -> dict[str, Any]:
        at = None if after is None else time.time() + parse_duration(after)
        record = await op.keys.expire(key_id, at)
        await op.publish(key_id)
        await op.record("key.expire", key_id, expires_at=record.expires_at)
        return key_view(record)

    emit(run(config_path, work))


@click.command("migrate")
@CONFIG
def migrate_command(config_path: str) -> None:
    """Create or upgrade the store's tables to the current schema."""

    async def work(op: Operator) -> str | None:
        await migrate(op.db)
        return await current_revision(op.db)

    click.echo(f"store at revision {run(config_path, work)}")
