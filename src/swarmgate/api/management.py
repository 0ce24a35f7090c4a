"""The management application (FastAPI): OpenAPI document, /docs and the admin API.

A framework is welcome here, off the hot path: it validates admin payloads and generates most
of the OpenAPI document. Every error it produces is rendered in OpenAI's schema too. /docs is
Swagger UI served from the ``swagger-ui-bundle`` package, never from a CDN, so that it works on
an air-gapped network.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Route
from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]

from swarmgate import __version__
from swarmgate.api import openapi
from swarmgate.auth.roles import require
from swarmgate.config import Auth
from swarmgate.errors import (
    BadRequest,
    Forbidden,
    GatewayError,
    MethodNotAllowed,
    NotFound,
    ServiceUnavailable,
    StoreError,
)
from swarmgate.pipeline.asgi import new_request_id, valid_request_id
from swarmgate.types import Authenticator, Principal

log = logging.getLogger("swarmgate.management")


def request_id_of(request: Request) -> str:
    """The request's id: the client's X-Request-ID if valid, else a new one; the same value
    for the whole request (it is echoed in the response header and in audit records)."""
    known: str | None = getattr(request.state, "request_id", None)
    if known is None:
        raw = request.headers.get("x-request-id")
        known = (valid_request_id(raw.encode("latin-1")) if raw else None) or new_request_id()
        request.state.request_id = known
    return known


async def principal_of(authenticator: Authenticator, request: Request) -> Principal:
    """The caller of a management route, authenticated as an inference request would be."""
    client = request.client
    return await authenticator.authenticate(
        request.headers.get("authorization"),
        client.host if client else None,
        ", ".join(request.headers.getlist("x-forwarded-for")) or None,
        request_id_of(request),
    )


async def privileged(
    auth: Auth, authenticator: Authenticator, request: Request, scope: str, closed: str
) -> Principal:
    """The caller of a route that changes the gateway, holding ``scope``. While
    authentication is disabled every caller would be the system principal: such routes stay
    closed (a 403 saying ``closed``) unless ``auth.open_admin_without_auth``."""
    if not auth.enabled and not auth.open_admin_without_auth:
        raise Forbidden(closed)
    principal = await principal_of(authenticator, request)
    require(principal, scope)
    return principal


def error_response(exc: GatewayError, request: Request) -> JSONResponse:
    rid = request_id_of(request)
    return JSONResponse(
        exc.body(rid), status_code=exc.status, headers={"x-request-id": rid, **exc.headers}
    )


class AllowedMethods:
    """The methods each route of the app serves, for the ``Allow`` header of a 405 (which
    Starlette's router fills from the first route it matched, not from every route of a path)."""

    def __init__(self, routes: Iterable[BaseRoute]) -> None:
        self._routes = [
            (route.path_regex, frozenset(route.methods))
            for route in routes
            if isinstance(route, Route) and route.methods
        ]

    def __call__(self, path: str) -> str:
        methods = {m for regex, served in self._routes if regex.match(path) for m in served}
        return ", ".join(sorted(methods))


def _serve_docs(app: FastAPI) -> None:
    app.mount("/docs/assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def _docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="swarmgate API",
            swagger_js_url="/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/docs/assets/swagger-ui.css",
            swagger_favicon_url="/docs/assets/favicon-32x32.png",
        )


def build_management_app(routers: Iterable[APIRouter] = ()) -> FastAPI:
    app = FastAPI(
        title="swarmgate",
        version=__version__,
        description="An OpenAI-compatible inference gateway in front of a swarm of model servers.",
        docs_url=None,  # FastAPI's page loads Swagger UI from a CDN: served locally below
        redoc_url=None,
    )
    _serve_docs(app)

    routers = tuple(routers)
    for router in routers:
        app.include_router(router)
    allowed = AllowedMethods([*app.router.routes, *(r for rt in routers for r in rt.routes)])

    @app.middleware("http")
    async def _request_id(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        try:
            response = await call_next(request)
        except Exception:
            # A bug of ours: logged with its traceback, answered in our schema (not as
            # Starlette's text/plain 500), with the request id to find it in the log.
            rid = request_id_of(request)
            log.exception(
                "unexpected error serving %s %s (request %s)", request.method, request.url.path, rid
            )
            error = GatewayError("internal error in the gateway; see its log for this request id")
            return error_response(error, request)
        response.headers["x-request-id"] = request_id_of(request)
        return response

    @app.exception_handler(GatewayError)
    async def _gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
        return error_response(exc, request)

    @app.exception_handler(StoreError)
    async def _store_error(request: Request, exc: StoreError) -> JSONResponse:
        return error_response(ServiceUnavailable(f"the store is unavailable: {exc}"), request)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return error_response(BadRequest(f"{loc}: {first.get('msg')}", param=loc or None), request)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error: GatewayError
        if exc.status_code == 404:
            error = NotFound(f"no route {request.method} {request.url.path}")
        elif exc.status_code == 405:
            methods = allowed(request.url.path)
            error = MethodNotAllowed(
                f"{request.method} is not allowed on {request.url.path}; use {methods}",
                headers={"allow": methods},
            )
        else:
            error = BadRequest(str(exc.detail))
            error.status = exc.status_code  # type: ignore[misc]
        return error_response(error, request)

    def custom_openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            app.openapi_schema = openapi.merge(document)
        return app.openapi_schema

    app.openapi = custom_openapi  # type: ignore[method-assign]
    return app
