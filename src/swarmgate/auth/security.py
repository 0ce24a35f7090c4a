"""The identity-and-access parts of one gateway process, built together and run together.

Built once by ``create_app`` over the ``store.Store`` it is given (database, event bus,
repositories): the key service, the IP policy and the blocks it shares with the other replicas,
the JWT verifier, the audit log writer, the key administration service, the last-use recorder
and the key lifecycle, wired into the ``KeyAuthenticator`` the hot path calls. ``start``
prepares the store (migrating it if configured, making sure an admin key exists), replays the
stored IP blocks and subscribes to revocation events; background loops record keys' last use
and run the key lifecycle (retention, rotation due) off the hot path; ``close`` flushes what is
queued. The store itself is
closed by whoever opened it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from swarmgate.auth.audit import AuditLog
from swarmgate.auth.authenticator import KeyAuthenticator
from swarmgate.auth.blocklist import SharedBlocks
from swarmgate.auth.ip import IPPolicy
from swarmgate.auth.keyadmin import KeyAdmin, model_names, queued
from swarmgate.auth.keys import KeyHasher, KeyService, load_or_create_server_secret
from swarmgate.auth.lastused import LastUsed
from swarmgate.auth.lifecycle import KeyLifecycle
from swarmgate.config import Settings
from swarmgate.errors import StoreError
from swarmgate.observability.metrics import Metrics
from swarmgate.store import Store, names

if TYPE_CHECKING:
    from swarmgate.auth.jwt import JWTVerifier

log = logging.getLogger("swarmgate.auth")
LAST_USED_FLUSH_SECONDS = 10.0


def server_hasher(settings: Settings) -> KeyHasher:
    """The HMAC of keys under ``auth.secret``, or the secret kept in ``auth.secret_file``."""
    auth = settings.auth
    path = Path(auth.secret_file or "swarmgate.secret")
    return KeyHasher(load_or_create_server_secret(auth.secret, path))


async def prepare_store(settings: Settings, store: Store, keys: KeyService) -> None:
    """Migrate (if configured) and make sure an admin key exists. Idempotent."""
    if settings.store.migrate_on_start:
        await store.migrate()
    created = await keys.bootstrap_admin(settings.auth.admin_key)
    if created is not None and created != settings.auth.admin_key:
        # Printed once, to the terminal and not to the logs; it cannot be shown again.
        print(
            f"swarmgate: created the first admin key (shown only now, keep it safe):\n  {created}",
            file=sys.stderr,
            flush=True,
        )


class Security:
    def __init__(self, settings: Settings, metrics: Metrics, store: Store) -> None:
        self.settings = settings
        self.store = store
        auth = settings.auth
        self.hasher = server_hasher(settings)
        self.keys = KeyService(store.keys, self.hasher, default_expiry=auth.default_key_expiry)
        self.audit = AuditLog(store.audit, settings.audit)
        self.ip_policy = IPPolicy(auth.ip)
        self.blocks = SharedBlocks(self.ip_policy, store.ip_blocks, store.events)
        self.jwt: JWTVerifier | None = None
        if auth.jwt.enabled:
            from swarmgate.auth.jwt import JWTVerifier

            self.jwt = JWTVerifier(auth.jwt)
        # With auth.enabled false, every caller the IP policy admits is the system principal.
        self.authenticator = KeyAuthenticator(
            auth,
            self.keys,
            self.hasher,
            self.ip_policy,
            self.audit,
            metrics,
            self.jwt,
            on_block=self.blocks.autoblocked,
        )
        self.admin = KeyAdmin(
            self.keys,
            store.keys,
            store.events,
            queued(self.audit),
            auth.rotation_grace,
            models=model_names(settings),
            rotation_period=auth.rotation_period,
            tiers=settings.limits.all_tiers(),
        )
        self.lifecycle = KeyLifecycle(
            auth, store.keys, store.ip_blocks, self.audit, metrics.registry
        )
        self.last_used = LastUsed(self.authenticator.last_used, store.keys, settings.audit)
        store.events.subscribe(names.KEY_EVENTS, self.authenticator.invalidate)
        store.events.subscribe(names.IP_EVENTS, self.blocks.on_event)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._warn_if_open()
        await prepare_store(self.settings, self.store, self.keys)
        await self.reload_ip_blocks()
        await self.audit.start()
        await self.store.events.start()
        self._tasks.append(asyncio.create_task(self._background(), name="key-last-used"))
        self._tasks.append(asyncio.create_task(self.lifecycle.run(), name="key-lifecycle"))

    def _warn_if_open(self) -> None:
        auth = self.settings.auth
        if auth.enabled:
            return
        log.warning(
            "authentication is DISABLED (auth.enabled: false): every caller the IP policy "
            "admits is the system principal, with every scope"
        )
        if auth.open_admin_without_auth:
            log.warning(
                "auth.open_admin_without_auth: the admin API is OPEN to every caller who can "
                "reach this gateway (keys, audit log, IP blocks)"
            )
        else:
            log.warning(
                "the admin API is closed while authentication is disabled "
                "(auth.open_admin_without_auth: true opens it to every caller)"
            )

    async def reload_ip_blocks(self) -> None:
        await self.blocks.reload()

    async def _background(self) -> None:
        """Every few seconds: keys' last use to the store, and IP blocks from it (so they reach,
        and their removal lifts, every worker and replica even without Redis or an event)."""
        while True:
            await asyncio.sleep(LAST_USED_FLUSH_SECONDS)
            try:
                await self.last_used.flush()
            except Exception:
                log.exception("could not record keys' last use")
            try:
                await self.reload_ip_blocks()
            except StoreError as exc:
                log.warning("could not reload IP blocks: %s", exc)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.blocks.close()
        with contextlib.suppress(Exception):
            await self.last_used.stop()
        await self.audit.stop()
        if self.jwt is not None:
            await self.jwt.close()
