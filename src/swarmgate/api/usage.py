"""The usage report over HTTP: ``GET /v1/usage`` (a key's own) and ``GET /admin/usage`` (all).

(No ``from __future__ import annotations`` here: FastAPI must resolve the route signatures.)

Both read the ledger through ``limits.usage``; errors are OpenAI's schema, as everywhere in the
management app. On ``/v1/usage`` a caller with the ``admin`` scope sees everyone's usage and may
filter by key, owner and model; any other key sees only its own (naming another key or owner is
a 403); a token (JWT) sees its subject's, the rows whose owner is that name (as for the owner
limits and budgets: a key's owner and a token's subject are one name space), and may not filter
by key (a token whose subject is the guests' owner name, ``anonymous``, is refused); an
anonymous guest has no usage to see (403). CSV with ``format=csv`` or ``Accept: text/csv``.
"""

import time
from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response

from swarmgate.api import openapi
from swarmgate.api.management import principal_of, request_id_of
from swarmgate.auth.authenticator import GUEST
from swarmgate.auth.roles import require
from swarmgate.auth.security import Security
from swarmgate.errors import Forbidden
from swarmgate.limits.usage import UsageQuery, run, to_csv
from swarmgate.types import ApiScope, Principal

_TIME = (
    "Epoch seconds, an ISO 8601 date or datetime (UTC unless it says), or a duration back "
    "from now (7d, 12h)"
)
_ROW = {
    "type": "object",
    "properties": {
        "bucket": {"type": "integer", "description": "The bucket's start, epoch seconds (UTC)"},
        "date": {"type": "string", "format": "date-time"},
        "key": {"type": ["string", "null"]},
        "owner": {"type": "string"},
        "model": {"type": ["string", "null"]},
        "requests": {"type": "integer"},
        "errors": {"type": "integer", "description": "Answered with a status >= 400"},
        "cut": {"type": "integer", "description": "Streams cut short"},
        "tokens_in": {"type": "integer"},
        "tokens_out": {"type": "integer"},
        "total_tokens": {"type": "integer"},
        "cost": {"type": "number"},
        "latency_avg": {"type": "number", "description": "Seconds"},
    },
}
REPORT = {
    "type": "object",
    "required": ["object", "start", "end", "bucket", "group_by", "data", "totals"],
    "properties": {
        "object": {"const": "usage.report"},
        "start": {"type": "number"},
        "end": {"type": "number"},
        "bucket": {"enum": ["day", "hour", "none"]},
        "group_by": {"type": "array", "items": {"enum": ["key", "owner", "model"]}},
        "filters": {"type": "object"},
        "data": {"type": "array", "items": _ROW},
        "totals": {"type": "object"},
    },
}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The report (JSON, or CSV with format=csv or Accept: text/csv)",
        "content": {
            "application/json": {"schema": REPORT},
            "text/csv": {"schema": {"type": "string"}},
        },
    },
    400: openapi.error("A bad time, range, group_by, bucket or format"),
    **openapi.AUTH_ERRORS,
}


Format = Annotated[Literal["json", "csv"] | None, Query(alias="format")]
Start = Annotated[
    str | None,
    Query(description="From (inclusive); default: 30 days before end. " + _TIME, max_length=64),
]
End = Annotated[
    str | None, Query(description="Until (exclusive); default: now. " + _TIME, max_length=64)
]
GroupBy = Annotated[
    str | None,
    Query(
        description="Comma-separated: key, owner, model (default key,model; empty: none)",
        max_length=64,
    ),
]
BucketParam = Annotated[
    Literal["day", "hour", "none"], Query(description="UTC days, hours, or the whole range")
]
Name = Annotated[str | None, Query(max_length=200)]


@dataclass(frozen=True, slots=True)
class ReportParameters:
    """The query parameters both routes take, as given: FastAPI fills them in (a class
    dependency), ``UsageQuery.parse`` checks them once the caller is known (a 401 first)."""

    start: Start = None
    end: End = None
    group_by: GroupBy = None
    bucket: BucketParam = "day"
    key: Name = None
    owner: Name = None
    model: Name = None
    fmt: Format = None


class _Report:
    def __init__(self, security: Security) -> None:
        self.security = security

    async def principal(self, request: Request) -> Principal:
        return await principal_of(self.security.authenticator, request)

    def is_admin(self, principal: Principal) -> bool:
        auth = self.security.settings.auth
        if not auth.enabled and not auth.open_admin_without_auth:
            return False  # everyone would be the system principal: as closed as /admin
        return ApiScope.ADMIN.value in principal.scopes

    async def answer(self, request: Request, asked: ReportParameters) -> Response:
        query = UsageQuery.parse(
            time.time(),
            start=asked.start,
            end=asked.end,
            group_by=asked.group_by,
            bucket=asked.bucket,
            key=asked.key,
            owner=asked.owner,
            model=asked.model,
        )
        report = await run(self.security.store.usage, query)
        headers = {"x-request-id": request_id_of(request)}
        accept = request.headers.get("accept", "")
        if asked.fmt == "csv" or (asked.fmt is None and "text/csv" in accept):
            return Response(to_csv(report, query), media_type="text/csv", headers=headers)
        return JSONResponse(report, headers=headers)


def _own(principal: Principal, asked: ReportParameters) -> ReportParameters:
    """What a caller without the admin scope may see: its own usage, nothing else."""
    if principal.via == "anonymous":
        raise Forbidden(
            "an anonymous caller has no usage of its own; authenticate with an API key or a "
            "token to see yours"
        )
    if principal.via == "jwt":
        # Guests are recorded under this owner name: a token with it for a subject would be
        # shown every guest's requests as its own.
        if principal.subject == GUEST.subject:
            raise Forbidden(
                f"a token whose subject is {GUEST.subject!r} shares the owner name of anonymous "
                "guests in the ledger: its usage cannot be told apart; use an API key"
            )
        if asked.key is not None:
            raise Forbidden(
                "a token cannot filter by key (group_by=key shows its subject's keys)",
                param="key",
            )
    elif principal.key_id is None:
        raise Forbidden("this caller has no usage of its own; use an API key")
    elif asked.key is not None and asked.key != principal.key_id:
        raise Forbidden("a key sees only its own usage", param="key")
    if asked.owner is not None and asked.owner != principal.subject:
        raise Forbidden("a caller sees only its own usage", param="owner")
    return replace(asked, key=principal.key_id, owner=principal.subject)


def build_usage_router(security: Security) -> APIRouter:
    router = APIRouter(tags=["usage"])
    report = _Report(security)
    Asked = Annotated[ReportParameters, Depends()]

    @router.get(
        "/v1/usage",
        summary="Usage of this key (an admin: of everyone), aggregated",
        responses=_RESPONSES,
        openapi_extra={"security": [{"bearer": []}]},
    )
    async def usage(request: Request, asked: Asked) -> Response:
        principal = await report.principal(request)
        if not report.is_admin(principal):
            asked = _own(principal, asked)
        return await report.answer(request, asked)

    @router.get(
        "/admin/usage",
        summary="Everyone's usage, aggregated (admin scope)",
        tags=["admin"],
        responses=_RESPONSES,
        openapi_extra={"security": [{"bearer": []}]},
    )
    async def admin_usage(request: Request, asked: Asked) -> Response:
        principal = await report.principal(request)
        if not report.is_admin(principal):
            require(principal, ApiScope.ADMIN)
            raise Forbidden("the admin API is closed while authentication is disabled")
        return await report.answer(request, asked)

    return router
