"""``swarmgate keys ...``, ``swarmgate ip-blocks ...``, ``swarmgate usage`` and ``swarmgate
migrate``: operating on the store from a shell.

The commands talk to the same SQL store as the running gateways, through the same
``store.open`` and (for keys) the same ``auth.keyadmin.KeyAdmin`` as the admin API, with actor
``cli``; a key change is published on Redis (when configured) so that every replica drops its
cached principal at once, and otherwise reaches them within ``auth.cache_ttl`` seconds. They need
the store's settings only: the deployments' ``api_key_env`` variables need not be set.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import click

from swarmgate import store as stores
from swarmgate.api.admin import key_view
from swarmgate.auth.ip import Networks
from swarmgate.auth.keyadmin import Actor, KeyAdmin, immediate, model_names
from swarmgate.auth.keys import NEVER, ExpiresAt, KeyService
from swarmgate.auth.roles import default_scopes, parse_role, parse_scopes
from swarmgate.auth.security import server_hasher
from swarmgate.config import Settings, load_settings, parse_duration
from swarmgate.errors import ConfigError, GatewayError, StoreError
from swarmgate.limits import usage as usage_report
from swarmgate.store import names
from swarmgate.store.ipblocks import StoredBlock
from swarmgate.store.migrate import current_revision

T = TypeVar("T")
CLI = Actor("cli")
CONFIG = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="SWARMGATE_CONFIG",
    default="swarmgate.yaml",
    show_default=True,
    help="The gateway's configuration file (for the store URL and the server secret).",
)


def store_settings(config_path: str) -> Settings:
    return load_settings(config_path, deployment_keys=False)


@asynccontextmanager
async def key_admin(config_path: str) -> AsyncIterator[KeyAdmin]:
    settings = store_settings(config_path)
    store = stores.open(settings)
    try:
        if settings.store.migrate_on_start:
            await store.migrate()
        if await store.keys.count() == 0:
            # Most likely a configuration that points at another store than the gateway's.
            click.echo(
                f"swarmgate: note: the store at {store.db.url} holds no keys yet; is it the one "
                "your gateway uses (same --config, same SWARMGATE_STORE__URL)?",
                err=True,
            )
        keys = KeyService(
            store.keys, server_hasher(settings), default_expiry=settings.auth.default_key_expiry
        )
        yield KeyAdmin(
            keys,
            store.keys,
            store.events,
            immediate(store.audit),
            settings.auth.rotation_grace,
            models=model_names(settings),
            rotation_period=settings.auth.rotation_period,
            tiers=settings.limits.all_tiers(),
        )
    finally:
        await store.close()


def run(config_path: str, work: Callable[[KeyAdmin], Awaitable[T]]) -> T:
    async def main() -> T:
        async with key_admin(config_path) as admin:
            return await work(admin)

    return _exit_on_error(main)


def _exit_on_error(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
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
@click.option(
    "--expires",
    default=None,
    help="Lifetime, e.g. 30d, 12h, or never (default: auth.default_key_expiry, else never).",
)
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
        expires_at = _expiry(expires)
    except ValueError as exc:
        click.echo(f"swarmgate: {exc}", err=True)
        sys.exit(2)
    allowed = None if models is None else [m.strip() for m in models.split(",") if m.strip()]

    async def work(admin: KeyAdmin) -> dict[str, Any]:
        record, secret = await admin.create(
            CLI,
            name or f"{owner}-{the_role}",
            owner,
            the_role,
            the_scopes,
            tier,
            allowed,
            expires_at,
        )
        return {"key": key_view(record), "secret": secret}

    emit(run(config_path, work))


LIMIT_OPTIONS = (
    "rps",
    "burst",
    "rpm",
    "rph",
    "rpd",
    "tpm",
    "tpd",
    "concurrent",
    "daily_budget",
    "monthly_budget",
)


@keys.command("update")
@CONFIG
@click.argument("key_id")
@click.option("--tier", default=None, help="A configured tier (limits.tiers, or shipped).")
@click.option("--rps", type=float, default=None, help="Requests per second (GCRA).")
@click.option("--burst", type=int, default=None, help="Requests at once under --rps.")
@click.option("--rpm", type=int, default=None, help="Requests in any minute.")
@click.option("--rph", type=int, default=None, help="Requests in any hour.")
@click.option("--rpd", type=int, default=None, help="Requests in any day.")
@click.option("--tpm", type=int, default=None, help="Tokens in any minute.")
@click.option("--tpd", type=int, default=None, help="Tokens in any day.")
@click.option("--tokens", type=click.Choice(["input", "output", "total"]), default=None)
@click.option("--concurrent", type=int, default=None, help="Requests in flight at once.")
@click.option(
    "--daily-budget", type=float, default=None, help="Spend per UTC day (deployments' prices)."
)
@click.option("--monthly-budget", type=float, default=None, help="Spend per UTC month.")
@click.option("--clear-limits", is_flag=True, help="Drop the key's own limits first.")
def update(
    config_path: str, key_id: str, tier: str | None, clear_limits: bool, **fields: Any
) -> None:
    """Give a key a tier and/or its own limits over the tier's (merged into its current
    ones). Every replica applies it within moments (its cached principal is dropped)."""
    limits = {name: value for name, value in fields.items() if value is not None}
    if tier is None and not limits and not clear_limits:
        click.echo("swarmgate: nothing to change: give --tier, a limit or --clear-limits", err=True)
        sys.exit(2)

    async def work(admin: KeyAdmin) -> dict[str, Any]:
        record = await admin.set_limits(
            CLI, key_id, tier, limits or None, replace_limits=clear_limits
        )
        return key_view(record)

    emit(run(config_path, work))


def _expiry(expires: str | None) -> ExpiresAt:
    if expires is None:
        return None
    if expires.strip().lower() == "never":
        return NEVER
    return time.time() + parse_duration(expires)


@keys.command("list")
@CONFIG
@click.option("--owner", default=None, help="Only this owner's keys.")
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked keys.")
@click.option(
    "--due-for-rotation",
    "due",
    is_flag=True,
    help="Only active keys not rotated within auth.rotation_period, least recently first.",
)
@click.option("--limit", default=100, show_default=True)
@click.option("--offset", default=0, show_default=True)
def list_keys(
    config_path: str, owner: str | None, include_revoked: bool, due: bool, limit: int, offset: int
) -> None:
    """List keys (never their secrets)."""

    async def work(admin: KeyAdmin) -> dict[str, Any]:
        if due:
            records = await admin.due_for_rotation(owner, limit, offset)
        else:
            records = await admin.list(owner, include_revoked, limit, offset)
        return {"data": [key_view(r) for r in records]}

    emit(run(config_path, work))


@keys.command("show")
@CONFIG
@click.argument("key_id")
def show(config_path: str, key_id: str) -> None:
    """Show one key and the visible prefixes of its secrets."""

    async def work(admin: KeyAdmin) -> dict[str, Any]:
        record, prefixes = await admin.show(key_id)
        return key_view(record, prefixes)

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

    async def work(admin: KeyAdmin) -> dict[str, Any]:
        seconds = None if grace is None else parse_duration(grace, allow_zero=True)
        record, secret, seconds = await admin.rotate(CLI, key_id, seconds)
        return {"key": key_view(record), "secret": secret, "old_secret_valid_for": seconds}

    emit(run(config_path, work))


@keys.command("revoke")
@CONFIG
@click.argument("key_id")
def revoke(config_path: str, key_id: str) -> None:
    """Revoke a key at once."""

    async def work(admin: KeyAdmin) -> dict[str, Any]:
        return key_view(await admin.revoke(CLI, key_id))

    emit(run(config_path, work))


@keys.command("expire")
@CONFIG
@click.argument("key_id")
@click.option("--in", "after", default=None, help="Expire after this long (default: now).")
def expire(config_path: str, key_id: str, after: str | None) -> None:
    """Make a key expire now or after a duration."""

    async def work(admin: KeyAdmin) -> dict[str, Any]:
        at = None if after is None else time.time() + parse_duration(after)
        return key_view(await admin.expire(CLI, key_id, at))

    emit(run(config_path, work))


@asynccontextmanager
async def opened(config_path: str) -> AsyncIterator[stores.Store]:
    """The store of this configuration, migrated if the gateway would migrate it."""
    settings = store_settings(config_path)
    store = stores.open(settings)
    try:
        if settings.store.migrate_on_start:
            await store.migrate()
        yield store
    finally:
        await store.close()


@click.group("ip-blocks")
def ip_blocks() -> None:
    """List and lift the IP blocks kept in the store: operators' and automatic ones."""


@ip_blocks.command("list")
@CONFIG
def list_blocks(config_path: str) -> None:
    """Blocks in force in the store (``source``: operator, or failures for automatic ones).
    Blocks in the configuration file (auth.ip.block) are not listed: change the file."""

    async def main() -> dict[str, Any]:
        async with opened(config_path) as store:
            blocks = await store.ip_blocks.active(time.time())
        return {"data": [block_view(b) for b in blocks]}

    emit(_exit_on_error(main))


@ip_blocks.command("delete")
@CONFIG
@click.argument("cidr")
def delete_block(config_path: str, cidr: str) -> None:
    """Lift a block on every replica: deleted from the store (replicas reload it within
    seconds) and announced on Redis when redis.url is set (at once)."""
    try:
        normalized = Networks([cidr]).cidrs[0]
    except ValueError as exc:
        click.echo(f"swarmgate: {exc}", err=True)
        sys.exit(2)

    async def main() -> bool:
        async with opened(config_path) as store:
            removed = await store.ip_blocks.remove(normalized)
            # Published even with no row: a replica may hold a block it could not store.
            await store.events.publish(names.IP_EVENTS, "unblock " + normalized)
            await immediate(store.audit)(CLI, "ip.unblock", normalized, {"stored": removed})
        return removed

    removed = _exit_on_error(main)
    emit({"cidr": normalized, "unblocked": removed})
    if not removed:
        click.echo(f"swarmgate: {normalized} was not blocked in the store", err=True)
        sys.exit(1)


def block_view(block: StoredBlock) -> dict[str, Any]:
    return {
        "cidr": block.cidr,
        "until": block.expires_at,
        "reason": block.reason,
        "source": block.source,
        "created_at": block.created_at,
        "created_by": block.created_by,
    }


@click.command("usage")
@CONFIG
@click.option("--key", default=None, help="Only this key's usage (a key id).")
@click.option("--owner", default=None, help="Only this owner's usage.")
@click.option("--model", default=None, help="Only this model's usage.")
@click.option(
    "--since",
    default=None,
    help="From (inclusive): epoch seconds, 2026-12-01, 2026-12-01T10:00Z, or 7d back from now. "
    "Default: 30 days before --until.",
)
@click.option("--until", default=None, help="Until (exclusive), in the same forms. Default: now.")
@click.option(
    "--by",
    "group_by",
    default=",".join(usage_report.DEFAULT_GROUPS),
    show_default=True,
    help="Comma-separated groups: key, owner, model ('' for none).",
)
@click.option(
    "--bucket",
    type=click.Choice(["day", "hour", "none"]),
    default="day",
    show_default=True,
    help="UTC days, hours, or the whole range.",
)
@click.option("--csv", "as_csv", is_flag=True, help="CSV instead of JSON.")
def usage(
    config_path: str,
    key: str | None,
    owner: str | None,
    model: str | None,
    since: str | None,
    until: str | None,
    group_by: str,
    bucket: str,
    as_csv: bool,
) -> None:
    """Usage from the ledger, aggregated per key, owner, model and day or hour (the same report
    as GET /admin/usage)."""

    async def main() -> tuple[dict[str, Any], usage_report.UsageQuery]:
        query = usage_report.UsageQuery.parse(
            time.time(),
            start=since,
            end=until,
            group_by=group_by,
            bucket=bucket,
            key=key,
            owner=owner,
            model=model,
        )
        async with opened(config_path) as store:
            return await usage_report.run(store.usage, query), query

    report, query = _exit_on_error(main)
    if as_csv:
        click.echo(usage_report.to_csv(report, query), nl=False)
    else:
        emit(report)


@click.command("migrate")
@CONFIG
def migrate_command(config_path: str) -> None:
    """Create or upgrade the store's tables to the current schema."""

    async def main() -> str | None:
        # Whatever store.migrate_on_start says: this is how a store that is not migrated on
        # start gets its tables. Nothing else is read first (there may be no tables yet).
        store = stores.open(store_settings(config_path))
        try:
            await store.migrate()
            return await current_revision(store.db)
        finally:
            await store.close()

    click.echo(f"store at revision {_exit_on_error(main)}")
