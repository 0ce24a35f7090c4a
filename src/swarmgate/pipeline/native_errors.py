"""Seed 001's error format for the native ``/api/v1`` face, and the one table that maps the
error tree of ``errors.py`` onto its codes.

    {"error": {"code": "INVALID_MODEL", "message": "...", "details": {...},
               "request_id": "req_...", "timestamp": "2026-11-24T10:00:00Z"}}

A class's code is found by walking its MRO, so a subclass without a row of its own gets its
parent's. A few errors are raised with a more precise OpenAI ``code`` (``model_not_allowed``);
those refine the class's row. It sits in ``pipeline`` (below ``api``) because the native stream
translator renders the error event of a stream that breaks off with it too.
"""

from __future__ import annotations

import time
from typing import Any

from swarmgate import errors
from swarmgate.pipeline.asgi import ClientGone, Headers, send_json
from swarmgate.types import Send

CODES: dict[type[errors.GatewayError], str] = {
    errors.GatewayError: "INTERNAL_ERROR",
    errors.BadRequest: "INVALID_REQUEST",
    errors.InvalidJSON: "INVALID_JSON",
    errors.Unauthorized: "UNAUTHORIZED",
    errors.Forbidden: "FORBIDDEN",
    errors.IPBlocked: "IP_BLOCKED",
    errors.NotFound: "NOT_FOUND",
    errors.ModelNotFound: "INVALID_MODEL",
    errors.MethodNotAllowed: "METHOD_NOT_ALLOWED",
    errors.Conflict: "CONFLICT",
    errors.RequestTimeout: "REQUEST_TIMEOUT",
    errors.PayloadTooLarge: "PAYLOAD_TOO_LARGE",
    errors.RateLimited: "RATE_LIMITED",
    errors.UpstreamError: "INFERENCE_FAILED",
    errors.UpstreamUnreachable: "BACKEND_UNREACHABLE",
    errors.UpstreamBroken: "INFERENCE_FAILED",
    errors.NoDeployment: "MODEL_UNAVAILABLE",
    errors.ServiceUnavailable: "SERVICE_UNAVAILABLE",
    errors.UpstreamTimeout: "INFERENCE_TIMEOUT",
}
# OpenAI codes raised on a class whose own row is less precise.
REFINED: dict[str, str] = {"model_not_allowed": "MODEL_NOT_ALLOWED"}
# A deployment's own 4xx (say, a prompt longer than its context), relayed with its message.
UPSTREAM_REJECTED = "UPSTREAM_REJECTED"

# For an error known only by its OpenAI body (the error event the call stage ends a broken
# stream with): the first class of the table with that ``code`` wins.
_BY_OPENAI_CODE: dict[str, str] = {}
for _cls, _code in CODES.items():
    if _cls.code is not None:
        _BY_OPENAI_CODE.setdefault(_cls.code, _code)
_BY_OPENAI_CODE.update(REFINED)


def code_of(exc: errors.GatewayError) -> str:
    refined = REFINED.get(exc.code or "")
    if refined is not None:
        return refined
    for cls in type(exc).__mro__:
        code = CODES.get(cls)
        if code is not None:
            return code
    return "INTERNAL_ERROR"


def code_of_openai(openai_code: object) -> str:
    if not isinstance(openai_code, str):
        return "INTERNAL_ERROR"
    return _BY_OPENAI_CODE.get(openai_code, "INTERNAL_ERROR")


def timestamp(now: float | None = None) -> str:
    """RFC 3339 in UTC with a ``Z``, to the millisecond."""
    now = time.time() if now is None else now
    millis = int(now * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{millis:03d}Z"


def error_body(
    code: str,
    message: str,
    request_id: str,
    details: dict[str, Any] | None = None,
    trace_id: str | None = None,
) -> dict[str, Any]:
    error = {
        "code": code,
        "message": message,
        "details": details or {},
        "request_id": request_id,
        "timestamp": timestamp(),
    }
    if trace_id is not None:  # only where the request belongs to a trace
        error["trace_id"] = trace_id
    return {"error": error}


def body_of(
    exc: errors.GatewayError,
    request_id: str,
    details: dict[str, Any] | None = None,
    trace_id: str | None = None,
) -> dict[str, Any]:
    extra = dict(details or {})
    if exc.param is not None:
        extra.setdefault("param", exc.param)
    return error_body(code_of(exc), exc.message, request_id, extra, trace_id)


async def send_native_error(
    send: Send,
    exc: errors.GatewayError,
    request_id: str,
    details: dict[str, Any] | None = None,
    trace_id: str | None = None,
) -> None:
    """The one writer of native errors: the status and headers of ``exc``, seed 001's body."""
    headers: Headers = [(b"x-request-id", request_id.encode())]
    for name, value in exc.headers.items():
        headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))
    try:
        await send_json(send, exc.status, body_of(exc, request_id, details, trace_id), headers)
    except OSError as gone:  # some servers raise when the client has left
        raise ClientGone from gone
