"""State that outlives a request: the SQL store (SQLite or PostgreSQL), its schema and migrations,
the repositories over it (API keys, audit log, usage ledger, IP blocks, model downloads, the
fleet's run-time changes, stored responses),
cross-replica events, and the write-behind queue that stores records off the hot path.

``sql.Database`` is the seam; the repositories (``keys.KeyStore``, ``audit.AuditStore``,
``usage.UsageStore``, ``ipblocks.IPBlockStore``, ``downloads.DownloadStore``,
``deployments.DeploymentStore``) take it in their
constructor and hold no other state. ``open`` builds them once from the settings, for the
gateway, ``swarmgate serve`` and the CLI alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from swarmgate.config import Settings
from swarmgate.store.audit import AuditStore
from swarmgate.store.deployments import DeploymentStore
from swarmgate.store.downloads import DownloadStore
from swarmgate.store.events import EventBus, LocalBus, RedisBus
from swarmgate.store.ipblocks import IPBlockStore
from swarmgate.store.keys import KeyStore
from swarmgate.store.migrate import migrate
from swarmgate.store.responses import ResponseStore
from swarmgate.store.sql import Database
from swarmgate.store.usage import UsageStore


@dataclass(frozen=True, slots=True)
class Store:
    """The database, the event bus and the repositories over them, built once."""

    db: Database
    events: EventBus
    keys: KeyStore
    audit: AuditStore
    usage: UsageStore
    ip_blocks: IPBlockStore
    downloads: DownloadStore
    deployments: DeploymentStore
    responses: ResponseStore

    async def migrate(self) -> None:
        """Bring the schema to the newest revision (idempotent; see ``store.migrate``)."""
        await migrate(self.db)

    async def close(self) -> None:
        """Close the event bus, then the database."""
        try:
            await self.events.close()
        finally:
            await self.db.close()


def open(settings: Settings) -> Store:
    """The store of these settings: nothing connects until first used, so this never fails
    for an unreachable database or Redis (only for a malformed URL: ``ConfigError``)."""
    sql = settings.store
    db = Database.from_url(
        sql.url,
        connect_timeout=sql.connect_timeout,
        pool_size=sql.pool_size,
        max_overflow=sql.max_overflow,
        pool_timeout=sql.pool_timeout,
        prepared_statements=sql.prepared_statements,
    )
    redis = settings.redis
    events: EventBus = (
        RedisBus(redis.url, publish_timeout=redis.publish_timeout) if redis.url else LocalBus()
    )
    return Store(
        db,
        events,
        KeyStore(db),
        AuditStore(db),
        UsageStore(db),
        IPBlockStore(db),
        DownloadStore(db),
        DeploymentStore(db),
        ResponseStore(db),
    )
