"""The identity-and-access parts of one gateway process, built together and run together.

Built once by ``create_app`` from the settings: the SQL store, the key service, the IP policy,
the JWT verifier, the audit log writer and the cross-replica event bus, wired into the
``KeyAuthenticator`` the hot path calls. ``start`` opens the store (migrating it if configured),
makes sure an admin key exists, replays operator IP blocks and subscribes to revocation events;
a background loop records keys' last use off the hot path; ``close`` flushes and closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from swarmgate.auth.audit import AuditLog
from swarmgate.auth.authenticator import KeyAuthenticator
from swarmgate.auth.ip import IPPolicy
from swarmgate.auth.keys import KeyHasher, KeyService, load_or_create_server_secret
from swarmgate.config import Settings
from swarmgate.errors import StoreError
from swarmgate.observability.metrics import Metrics
from swarmgate.store import names
from swarmgate.store.audit import AuditStore
from swarmgate.store.events import EventBus, LocalBus, RedisBus
from swarmgate.store.ipblocks import IPBlockStore
from swarmgate.store.keys import KeyStore
from swarmgate.store.migrate import migrate
from swarmgate.store.sql import Database

if TYPE_CHECKING:
    from swarmgate.auth.jwt import JWTVerifier

log = logging.getLogger("swarmgate.auth")
LAST_USED_FLUSH_SECONDS = 10.0


def secret_path(settings: Settings) -> Path:
    """Where the generated server secret lives (resolved by the config loader)."""
    return Path(settings.auth.secret_file or "swarmgate.secret")


class Security:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        auth = settings.auth
        self.db = Database.from_url(settings.store.url)
        self.key_store = KeyStore(self.db)
        self.hasher = KeyHasher(load_or_create_server_secret(auth.secret, secret_path(settings)))
        self.keys = KeyService(self.key_store, self.hasher)
        self.audit_store = AuditStore(self.db)
        self.audit = AuditLog(self.audit_store, settings.audit)
        self.ip_blocks = IPBlockStore(self.db)
        self.ip_policy = IPPolicy(auth.ip)
        self.jwt: JWTVerifier | None = None
        if auth.jwt.enabled:
            from swarmgate.auth.jwt import JWTVerifier

            self.jwt = JWTVerifier(auth.jwt)
        self.bus: EventBus = RedisBus(settings.redis.url) if settings.redis.url else LocalBus()
        # With auth.enabled false, every caller the IP policy admits is the system principal.
        self.authenticator = KeyAuthenticator(
            auth, self.keys, self.hasher, self.ip_policy, self.audit, metrics, self.jwt
        )
        self.bus.subscribe(names.KEY_EVENTS, self.authenticator.invalidate)
        self.bus.subscribe(names.IP_EVENTS, self._ip_event)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.prepare_store()
        await self.reload_ip_blocks()
        await self.audit.start()
        await self.bus.start()
        self._tasks.append(asyncio.create_task(self._flush_last_used(), name="key-last-used"))

    async def prepare_store(self) -> None:
        """Migrate (if configured) and make sure an admin key exists. Idempotent."""
        if self.settings.store.migrate_on_start:
            await migrate(self.db)
        created = await self.keys.bootstrap_admin(self.settings.auth.admin_key)
        if created is not None and created != self.settings.auth.admin_key:
            # Printed once, to the terminal and not to the logs; it cannot be shown again.
            print(
                "swarmgate: created the first admin key (shown only now, keep it safe):\n"
                f"  {created}",
                file=sys.stderr,
                flush=True,
            )

    async def reload_ip_blocks(self) -> None:
        for block in await self.ip_blocks.active(time.time()):
            self.ip_policy.block(block.cidr, block.expires_at, block.reason)

    def _ip_event(self, message: str) -> None:
        action, _, cidr = message.partition(" ")
        if action == "unblock":
            self.ip_policy.unblock(cidr)
        else:
            task = asyncio.get_running_loop().create_task(self.reload_ip_blocks())
            self._tasks.append(task)
            task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.remove(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("reloading IP blocks failed: %s", task.exception())

    async def publish_key_change(self, key_id: str) -> None:
        await self.bus.publish(names.KEY_EVENTS, key_id)

    async def _flush_last_used(self) -> None:
        """Every few seconds: keys' last use to the store, and operator IP blocks from it (so
        they reach every worker and replica even without Redis, or if an event was lost)."""
        while True:
            await asyncio.sleep(LAST_USED_FLUSH_SECONDS)
            await self.flush_last_used()
            try:
                await self.reload_ip_blocks()
            except StoreError as exc:
                log.warning("could not reload IP blocks: %s", exc)

    async def flush_last_used(self) -> None:
        pending = self.authenticator.last_used
        if not pending:
            return
        self.authenticator.last_used = {}
        try:
            await self.key_store.touch(pending)
        except StoreError as exc:
            log.warning("could not record keys' last use (will retry): %s", exc)
            for key_id, ts in pending.items():
                self.authenticator.last_used.setdefault(key_id, ts)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            await self.flush_last_used()
        await self.audit.stop()
        await self.bus.close()
        if self.jwt is not None:
            await self.jwt.close()
        await self.db.close()
