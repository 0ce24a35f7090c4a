"""The management app (FastAPI) on its own: whatever goes wrong in a route, the client gets a
JSON error in our schema with the request id, and the log gets the traceback."""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest
from fastapi import APIRouter

from swarmgate.api.management import build_management_app


class Bug(Exception):
    pass


def _buggy_router() -> APIRouter:
    router = APIRouter(prefix="/admin")

    @router.get("/broken")
    async def broken() -> dict[str, str]:
        raise Bug("a bug of ours")

    return router


async def _get(app: Any, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
    """One GET straight through the ASGI interface: status, headers, JSON body."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 8000),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    head = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], head, orjson.loads(body)


async def test_an_unexpected_exception_is_a_json_500_with_the_request_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = build_management_app([_buggy_router()])
    with caplog.at_level(logging.ERROR):
        status, headers, body = await _get(app, "/admin/broken", {"X-Request-ID": "bug-1"})
    assert status == 500
    assert headers["content-type"] == "application/json"
    assert headers["x-request-id"] == "bug-1"
    error = body["error"]
    assert error["type"] == "api_error" and error["request_id"] == "bug-1"
    assert "a bug of ours" not in error["message"]  # the details are for the log
    logged = [rec for rec in caplog.records if rec.exc_info and rec.exc_info[0] is Bug]
    assert len(logged) == 1 and "bug-1" in logged[0].getMessage()
