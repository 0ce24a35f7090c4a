"""The admin API under ``/admin`` (admin scope): keys, the audit log, IP blocks, reload.

(No ``from __future__ import annotations`` here: FastAPI must resolve the route signatures,
which name the ``Admin`` dependency defined inside each builder.)

FastAPI is used here, off the hot path, for payload validation and the OpenAPI document.
Every action is audited; changes to keys and blocks are published to the other replicas. Key
actions are ``auth.keyadmin.KeyAdmin``'s (the CLI's too); this module only maps HTTP onto them.
"""

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field

from swarmgate.api import openapi
from swarmgate.api.management import privileged, request_id_of
from swarmgate.api.reload import Reloader
from swarmgate.auth.ip import Networks
from swarmgate.auth.keyadmin import Actor
from swarmgate.auth.keys import NEVER, ExpiresAt
from swarmgate.auth.security import Security
from swarmgate.config import parse_duration
from swarmgate.errors import BadRequest, NotFound
from swarmgate.store import names
from swarmgate.store.audit import MAX_PAGE
from swarmgate.store.ipblocks import StoredBlock
from swarmgate.store.keys import KeyRecord, record_values
from swarmgate.store.schema import MAX_INTEGER_ID, MAX_OFFSET
from swarmgate.types import ApiScope, Principal, Role

_UNKNOWN_KEY: dict[int | str, dict[str, Any]] = {404: openapi.error("No such key")}


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    owner: str = Field(min_length=1, max_length=200)
    role: Role = Role.USER
    scopes: list[str] | None = Field(None, description="Default: the role's scopes")
    tier: str = Field("default", min_length=1, max_length=64)
    models: list[str] | None = Field(None, description="Allowed models; default: all")
    expires_in: str | None = Field(
        None,
        description="Duration such as 30d, 12h, 3600, or never; "
        "default: auth.default_key_expiry (none if unset)",
    )
    expires_at: float | None = Field(None, description="Epoch seconds", allow_inf_nan=False)


class KeyUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tier: str | None = Field(None, min_length=1, max_length=64, description="A configured tier")
    limits: dict[str, Any] | None = Field(
        None,
        description="The key's own limits over its tier's (rps, burst, rpm, rph, rpd, tpm, "
        "tpd, tokens, concurrent, daily_budget, monthly_budget), merged into its current ones; "
        "a field set to null is removed; limits: null clears them all",
    )
    replace_limits: bool = Field(False, description="Replace the key's own limits, not merge")


class KeyRotate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    grace: str | None = Field(None, description="How long the old secret keeps working (30m)")


class KeyExpire(BaseModel):
    model_config = ConfigDict(extra="forbid")
    at: float | None = Field(None, description="Epoch seconds; default: now")
    expires_in: str | None = None


class BlockCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cidr: str
    reason: str = Field("", max_length=500)
    duration: str | None = Field(None, description="e.g. 1h; default: until removed")


def key_view(record: KeyRecord, prefixes: list[str] | None = None) -> dict[str, Any]:
    view = {**record_values(record), "active": record.is_active(time.time())}
    if prefixes is not None:
        view["prefixes"] = prefixes
    return view


def _creation_expiry(body: KeyCreate) -> ExpiresAt:
    """``expires_in`` (a duration or ``never``) wins over ``expires_at``; neither: the default."""
    if body.expires_in is not None and body.expires_in.strip().lower() == "never":
        return NEVER
    seconds = _duration(body.expires_in, "expires_in")
    return body.expires_at if seconds is None else time.time() + seconds


def _duration(value: str | None, param: str, *, allow_zero: bool = False) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value, allow_zero=allow_zero)
    except ValueError as exc:
        raise BadRequest(str(exc), param=param) from None


class _Context:
    """What every admin route needs: the security parts, the admin check, the audit call."""

    def __init__(self, security: Security) -> None:
        self.security = security

    async def admin(self, request: Request) -> Principal:
        security = self.security
        return await privileged(
            security.settings.auth,
            security.authenticator,
            request,
            ApiScope.ADMIN,
            "the admin API is closed: authentication is disabled (auth.enabled: false); "
            "set auth.open_admin_without_auth: true to open it to every caller",
        )

    def actor(self, request: Request, who: Principal) -> Actor:
        return Actor(
            who.key_id or who.subject,
            request.client.host if request.client else None,
            request_id_of(request),
        )

    def audit(
        self, request: Request, who: Principal, action: str, target: str, **details: Any
    ) -> None:
        self.security.audit.record(
            action,
            actor=who.key_id or who.subject,
            target=target,
            client_ip=request.client.host if request.client else None,
            request_id=request_id_of(request),
            details=details,
        )


def _normalized(cidr: str) -> str:
    """``10.1.2.3/8`` → ``10.0.0.0/8``: blocks are stored, listed and lifted in one form."""
    try:
        return Networks([cidr]).cidrs[0]
    except ValueError as exc:
        raise BadRequest(f"cidr: {exc}", param="cidr") from None


def build_admin_router(security: Security, reloader: Reloader | None = None) -> APIRouter:
    # Every route answers what the admin check may raise (401, 403, 503) and declares the
    # bearer scheme; validation errors are documented as 400 by ``openapi.merge``.
    router = APIRouter(prefix="/admin", tags=["admin"], responses=openapi.AUTH_ERRORS)
    ctx = _Context(security)
    _key_routes(router, ctx)
    _audit_routes(router, ctx)
    _ip_routes(router, ctx)
    if reloader is not None:
        _reload_routes(router, ctx, reloader)
    for route in router.routes:
        if isinstance(route, APIRoute):
            route.openapi_extra = {"security": [{"bearer": []}], **(route.openapi_extra or {})}
    return router


def _key_routes(router: APIRouter, ctx: _Context) -> None:
    keys = ctx.security.admin
    actor = ctx.actor
    Admin = Annotated[Principal, Depends(ctx.admin)]

    @router.post("/keys", status_code=201, summary="Create a key (its secret is shown once)")
    async def create_key(body: KeyCreate, request: Request, who: Admin) -> dict[str, Any]:
        expires_at = _creation_expiry(body)
        record, secret = await keys.create(
            actor(request, who),
            body.name,
            body.owner,
            body.role,
            body.scopes,
            body.tier,
            body.models,
            expires_at,
        )
        return {"key": key_view(record), "secret": secret}

    @router.get(
        "/keys",
        summary="List keys (never their secrets)",
        responses={400: openapi.error("Bad parameters, or no auth.rotation_period is set")},
    )
    async def list_keys(
        who: Admin,
        owner: str | None = None,
        include_revoked: bool = False,
        due_for_rotation: Annotated[
            bool,
            Query(
                description="Only active keys not rotated within auth.rotation_period, "
                "least recently rotated first (include_revoked is then ignored)"
            ),
        ] = False,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    ) -> dict[str, Any]:
        if due_for_rotation:
            records = await keys.due_for_rotation(owner, limit, offset)
        else:
            records = await keys.list(owner, include_revoked, limit, offset)
        return {"data": [key_view(r) for r in records], "limit": limit, "offset": offset}

    @router.get("/keys/{key_id}", summary="Show one key", responses=_UNKNOWN_KEY)
    async def show_key(key_id: str, who: Admin) -> dict[str, Any]:
        record, prefixes = await keys.show(key_id)
        return key_view(record, prefixes)

    @router.patch(
        "/keys/{key_id}",
        summary="Give a key a tier or its own limits",
        responses={400: openapi.error("An unknown tier or a bad limit"), **_UNKNOWN_KEY},
    )
    async def update_key(
        key_id: str, body: KeyUpdate, request: Request, who: Admin
    ) -> dict[str, Any]:
        clear = "limits" in body.model_fields_set and body.limits is None
        record = await keys.set_limits(
            actor(request, who),
            key_id,
            body.tier,
            body.limits,
            replace_limits=body.replace_limits or clear,
        )
        return key_view(record)

    @router.post(
        "/keys/{key_id}/rotate",
        summary="New secret; the old one works for a grace",
        responses={400: openapi.error("A bad grace, or the key is revoked"), **_UNKNOWN_KEY},
    )
    async def rotate_key(
        key_id: str, request: Request, who: Admin, body: KeyRotate | None = None
    ) -> dict[str, Any]:
        grace = _duration(body.grace if body else None, "grace", allow_zero=True)
        record, secret, grace = await keys.rotate(actor(request, who), key_id, grace)
        return {"key": key_view(record), "secret": secret, "old_secret_valid_for": grace}

    @router.post(
        "/keys/{key_id}/revoke",
        summary="Revoke a key at once, on every replica",
        responses=_UNKNOWN_KEY,
    )
    async def revoke_key(key_id: str, request: Request, who: Admin) -> dict[str, Any]:
        return key_view(await keys.revoke(actor(request, who), key_id))

    @router.post(
        "/keys/{key_id}/expire", summary="Set a key's expiry (default: now)", responses=_UNKNOWN_KEY
    )
    async def expire_key(
        key_id: str, request: Request, who: Admin, body: KeyExpire | None = None
    ) -> dict[str, Any]:
        at = body.at if body else None
        seconds = _duration(body.expires_in if body else None, "expires_in")
        if seconds is not None:
            at = time.time() + seconds
        return key_view(await keys.expire(actor(request, who), key_id, at))


def _audit_routes(router: APIRouter, ctx: _Context) -> None:
    security = ctx.security
    Admin = Annotated[Principal, Depends(ctx.admin)]

    @router.get("/audit", summary="The audit log, newest first, with filters")
    async def audit_log(
        who: Admin,
        action: str | None = None,
        actor: str | None = None,
        outcome: str | None = None,
        since: Annotated[float | None, Query(allow_inf_nan=False)] = None,
        until: Annotated[float | None, Query(allow_inf_nan=False)] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
        cursor: Annotated[int | None, Query(ge=1, le=MAX_INTEGER_ID)] = None,
    ) -> dict[str, Any]:
        records, next_cursor = await security.store.audit.query(
            action=action,
            actor=actor,
            outcome=outcome,
            since=since,
            until=until,
            limit=limit,
            cursor=cursor,
        )
        return {
            "data": [
                {
                    "id": r.id,
                    "ts": r.ts,
                    "action": r.action,
                    "actor": r.actor,
                    "target": r.target,
                    "outcome": r.outcome,
                    "client_ip": r.client_ip,
                    "request_id": r.request_id,
                    "details": r.details,
                }
                for r in records
            ],
            "next_cursor": next_cursor,
        }


def _ip_routes(router: APIRouter, ctx: _Context) -> None:
    security = ctx.security
    audit = ctx.audit
    Admin = Annotated[Principal, Depends(ctx.admin)]

    @router.get("/ip-blocks", summary="Addresses blocked now (operator and automatic)")
    async def ip_blocks(who: Admin) -> dict[str, Any]:
        return {
            "data": [
                {"cidr": b.cidr, "until": b.until, "reason": b.reason, "source": b.source}
                for b in security.ip_policy.blocked()
            ]
        }

    @router.post("/ip-blocks", status_code=201, summary="Block an address or network")
    async def add_block(body: BlockCreate, request: Request, who: Admin) -> dict[str, Any]:
        cidr = _normalized(body.cidr)
        seconds = _duration(body.duration, "duration")
        now = time.time()
        until = None if seconds is None else now + seconds
        actor = who.key_id or who.subject
        await security.store.ip_blocks.put(StoredBlock(cidr, body.reason, now, until, actor))
        security.ip_policy.block(cidr, until, body.reason)
        await security.store.events.publish(names.IP_EVENTS, "block " + cidr)
        audit(request, who, "ip.block", cidr, reason=body.reason, until=until)
        return {"cidr": cidr, "until": until, "reason": body.reason}

    @router.delete(
        "/ip-blocks/{cidr:path}",
        summary="Lift a block",
        responses={
            400: openapi.error("Not an IP address or network"),
            404: openapi.error("Not blocked"),
        },
    )
    async def remove_block(cidr: str, request: Request, who: Admin) -> dict[str, Any]:
        cidr = _normalized(cidr)
        removed = await security.store.ip_blocks.remove(cidr)
        lifted = security.ip_policy.unblock(cidr)
        if not (removed or lifted):
            raise NotFound(f"{cidr} is not blocked", param="cidr")
        await security.store.events.publish(names.IP_EVENTS, "unblock " + cidr)
        audit(request, who, "ip.unblock", cidr)
        return {"cidr": cidr, "unblocked": True}


def _reload_routes(router: APIRouter, ctx: _Context, reloader: Reloader) -> None:
    Admin = Annotated[Principal, Depends(ctx.admin)]

    @router.post(
        "/reload",
        summary="Reload the configuration file",
        description="Reads the file the gateway was started with and applies what can change "
        "at run time (models, deployments, balancers, routing, timeouts, limits and tiers, "
        "discovery); settings that need a restart are listed in restart_required. A file with "
        "problems is refused (400) with check-config's messages, the running config untouched. "
        "Other processes sharing the event bus (Redis) re-read their own file too.",
        responses={
            400: openapi.error("The file has problems (listed in error.problems)"),
            409: openapi.error("The gateway was not started from a file"),
        },
    )
    async def reload_config(request: Request, who: Admin) -> dict[str, Any]:
        actor = who.key_id or who.subject
        done = await reloader.reload("api", actor)
        await reloader.publish()
        return done.view()
