"""Key administration, in one place: create, rotate, revoke, expire, list and show API keys.

The admin API (``api/admin.py``) and the CLI (``admin_cli.py``) are two faces of this service.
Each change is audited (who, from where, which request) and, when it must reach the cached
principals of every replica (rotate, revoke, expire), published on the event bus first. The two
faces differ only in how the audit record is written, which they pass in: the gateway queues it
on its write-behind ``AuditLog`` (``queued``); the CLI, a process that exits right after, stores
it before returning (``immediate``).
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from swarmgate.auth.audit import AuditLog
from swarmgate.auth.keys import ExpiresAt, KeyService
from swarmgate.config import Settings
from swarmgate.errors import BadRequest, NotFound
from swarmgate.limits.tiers import LimitSet
from swarmgate.store import names
from swarmgate.store.audit import AuditRecord, AuditStore
from swarmgate.store.events import EventBus
from swarmgate.store.keys import KeyRecord, KeyStore
from swarmgate.store.schema import MAX_OFFSET
from swarmgate.types import Clock, Role


def model_names(settings: Settings) -> dict[str, str]:
    """Every name a key may list, model ids and aliases, mapped to the model id."""
    names = {name: name for name in settings.models}
    for name, model in settings.models.items():
        names |= dict.fromkeys(model.aliases, name)
    return names


@dataclass(frozen=True, slots=True)
class Actor:
    """Who asks for a change: a key id or subject (or ``cli``), and where the request came from."""

    name: str
    client_ip: str | None = None
    request_id: str | None = None


# (actor, action, target, details) → the record written (or queued).
AuditTrail = Callable[[Actor, str, str, Mapping[str, Any]], Awaitable[None]]


def queued(log: AuditLog) -> AuditTrail:
    """Audit through the write-behind log: never waits on the database."""

    async def write(actor: Actor, action: str, target: str, details: Mapping[str, Any]) -> None:
        log.record(
            action,
            actor=actor.name,
            target=target,
            client_ip=actor.client_ip,
            request_id=actor.request_id,
            details=details,
        )

    return write


def immediate(store: AuditStore, clock: Clock = time.time) -> AuditTrail:
    """Audit straight into the store: the record is there when the command returns."""

    async def write(actor: Actor, action: str, target: str, details: Mapping[str, Any]) -> None:
        record = AuditRecord(
            action=action,
            ts=clock(),
            actor=actor.name,
            target=target,
            client_ip=actor.client_ip,
            request_id=actor.request_id,
            details=dict(details),
        )
        await store.insert_many([record])

    return write


def _first_problem(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return f"{where}: {first['msg']}" if where else str(first["msg"])
    return str(exc)


def _page(limit: int, offset: int) -> None:
    if not 1 <= limit <= MAX_OFFSET:
        raise BadRequest("limit must be a positive integer", param="limit")
    if not 0 <= offset <= MAX_OFFSET:
        raise BadRequest(f"offset must be between 0 and {MAX_OFFSET}", param="offset")


class KeyAdmin:
    """The operator's actions on keys, each audited and (if it must be) published."""

    def __init__(
        self,
        keys: KeyService,
        store: KeyStore,
        events: EventBus,
        audit: AuditTrail,
        rotation_grace: float,
        *,
        models: Mapping[str, str] | None = None,
        rotation_period: float | None = None,
        tiers: Iterable[str] | None = None,
        clock: Clock = time.time,
    ) -> None:
        self._keys = keys
        self._store = store
        self._events = events
        self._audit = audit
        self.rotation_grace = rotation_grace
        # Model id or alias → model id (``model_names``); None: no models to check against.
        self._models = models
        self.rotation_period = rotation_period  # auth.rotation_period; None: nothing is due
        # The configured tiers (limits.tiers and the shipped ones); None: any name.
        self._tiers = None if tiers is None else frozenset(tiers)
        self._clock = clock

    def _allowed_models(self, models: Iterable[str] | None) -> builtins.list[str] | None:
        """The model ids a key may use: each name must be a configured model or alias (a typo
        would make a key that can never be used); an alias stands for its model, which is what
        authorization compares with."""
        if models is None or self._models is None:
            return None if models is None else builtins.list(models)
        ids = []
        for name in models:
            model = self._models.get(name.strip()) if isinstance(name, str) else None
            if model is None:
                known = ", ".join(sorted(self._models)) or "(none)"
                raise BadRequest(
                    f"models: no model {name!r}; configured models and aliases: {known}",
                    param="models",
                )
            ids.append(model)
        return ids

    async def create(
        self,
        actor: Actor,
        name: str,
        owner: str,
        role: Role | str,
        scopes: Iterable[str] | None = None,
        tier: str = "default",
        models: Iterable[str] | None = None,
        expires_at: ExpiresAt = None,
    ) -> tuple[KeyRecord, str]:
        """A new key and its secret (shown once). Without ``scopes``: the role's defaults;
        without ``expires_at``: ``auth.default_key_expiry``; ``NEVER``: no expiry."""
        self._known_tier(tier)
        record, secret = await self._keys.create(
            name, owner, role, scopes, tier, self._allowed_models(models), expires_at
        )
        await self._audit(
            actor, "key.create", record.id, {"role": str(record.role), "tier": record.tier}
        )
        return record, secret

    def configure_tiers(self, tiers: Iterable[str]) -> None:
        """The tiers of a reloaded config (keys of a tier that went keep it: it has no limits
        of its own then, and ``default``'s apply)."""
        if self._tiers is not None:
            self._tiers = frozenset(tiers)

    def _known_tier(self, tier: str) -> None:
        if self._tiers is not None and tier not in self._tiers:
            known = ", ".join(sorted(self._tiers))
            raise BadRequest(f"tier: no tier {tier!r}; configured tiers: {known}", param="tier")

    async def set_limits(
        self,
        actor: Actor,
        key_id: str,
        tier: str | None = None,
        limits: Mapping[str, Any] | None = None,
        *,
        replace_limits: bool = False,
    ) -> KeyRecord:
        """Give a key a tier and/or its own limits over the tier's (``rpm``, ``tpm``,
        ``concurrent``... as in ``limits.tiers.LimitSet``). ``limits`` are merged into the
        key's current ones unless ``replace_limits`` (then an empty or None ``limits`` clears
        them); a field set to None is removed. Every replica drops its cached principal."""
        record, _ = await self.show(key_id)
        if tier is not None:
            self._known_tier(tier)
        own: dict[str, Any] | None = None
        if limits is not None or replace_limits:
            own = {} if replace_limits else dict(record.limits or ())
            for name, value in (limits or {}).items():
                if value is None:
                    own.pop(name, None)
                else:
                    own[name] = value
            try:
                own = LimitSet.model_validate(own).model_dump(exclude_unset=True)
            except ValueError as exc:  # pydantic's ValidationError is a ValueError
                raise BadRequest(f"limits: {_first_problem(exc)}", param="limits") from None
        keep = own is None
        await self._store.set_limits(key_id, tier, own or None, keep)
        details: dict[str, Any] = {}
        if tier is not None:
            details["tier"] = tier
        if not keep:
            details["limits"] = own or None
        await self._changed(actor, "key.update", key_id, details)
        updated, _ = await self.show(key_id)
        return updated

    async def rotate(
        self, actor: Actor, key_id: str, grace: float | None = None
    ) -> tuple[KeyRecord, str, float]:
        """A new secret; the old ones keep working for ``grace`` seconds (default:
        ``auth.rotation_grace``). Returns the key, the new secret and the grace applied."""
        seconds = self.rotation_grace if grace is None else grace
        record, secret = await self._keys.rotate(key_id, seconds)
        await self._changed(actor, "key.rotate", key_id, {"grace_seconds": seconds})
        return record, secret, seconds

    async def revoke(self, actor: Actor, key_id: str) -> KeyRecord:
        record = await self._keys.revoke(key_id)
        await self._changed(actor, "key.revoke", key_id, {})
        return record

    async def expire(self, actor: Actor, key_id: str, at: float | None = None) -> KeyRecord:
        """Make the key expire at ``at`` (default: now)."""
        record = await self._keys.expire(key_id, at)
        await self._changed(actor, "key.expire", key_id, {"expires_at": record.expires_at})
        return record

    async def list(
        self,
        owner: str | None = None,
        include_revoked: bool = False,
        limit: int = 50,
        offset: int = 0,
    ) -> builtins.list[KeyRecord]:
        """Keys, oldest first (never their secrets)."""
        _page(limit, offset)
        return await self._store.list(owner, include_revoked, limit, offset)

    async def due_for_rotation(
        self, owner: str | None = None, limit: int = 50, offset: int = 0
    ) -> builtins.list[KeyRecord]:
        """Active keys whose current secret is older than ``auth.rotation_period`` (made when
        the key was created or last rotated), least recently rotated first."""
        if self.rotation_period is None:
            raise BadRequest(
                "no rotation period is configured (auth.rotation_period)",
                param="due_for_rotation",
            )
        _page(limit, offset)
        now = self._clock()
        return await self._store.due_for_rotation(
            now - self.rotation_period, now, owner, limit, offset
        )

    async def show(self, key_id: str) -> tuple[KeyRecord, builtins.list[str]]:
        """One key and the visible prefixes of its secrets, current first."""
        record = await self._store.get(key_id)
        if record is None:
            raise NotFound(f"no API key {key_id!r}", param="key_id")
        return record, await self._store.prefixes(key_id)

    async def _changed(
        self, actor: Actor, action: str, key_id: str, details: Mapping[str, Any]
    ) -> None:
        # Published before it is audited: dropping the replicas' cached principals is what
        # makes the change take effect, and must not wait behind (or fail with) the audit.
        await self._events.publish(names.KEY_EVENTS, key_id)
        await self._audit(actor, action, key_id, details)
