"""Plain-ASGI request and response helpers for the hot path (no framework on this path).

A framework costs 2.2x in throughput here (DESIGN.md); these few functions are all the hot path
needs: read the head in one pass and a bounded body, send a JSON body, render an error in
OpenAI's schema. They sit below ``api/`` so that the pipeline (and the tasks that will run
through it) can answer without an HTTP face.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

import orjson

from swarmgate.errors import ClientGone as ClientGone  # raised here and by the stages
from swarmgate.errors import (
    GatewayError,
    InvalidJSON,
    PayloadTooLarge,
    RequestTimeout,
)
from swarmgate.types import ASGIScope, Message, Receive, Send
from swarmgate.upstream.transport import NOT_FORWARDED

Headers = list[tuple[bytes, bytes]]
JSON_TYPE = (b"content-type", b"application/json")
SSE_HEADERS: Headers = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class DisconnectWatch:
    """Notices a client leaving mid-stream and cancels the request's task.

    Some ASGI servers (uvicorn) let ``send`` succeed silently after the client has gone, so a
    stream would go on generating for nobody, holding a deployment slot. One task per stream
    waits on ``receive`` for ``http.disconnect``; ``finish`` must be called before the
    handler returns, so that a disconnect after the last byte cancels nothing.
    """

    __slots__ = ("_task", "_watch", "gone")

    def __init__(self, receive: Receive) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._task: asyncio.Task[object] | None = task
        self.gone = False
        self._watch = asyncio.ensure_future(self._wait(receive))

    async def _wait(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        if self._task is not None:
            self.gone = True
            self._task.cancel()

    def absorb(self) -> bool:
        """After a CancelledError: True if the client's departure caused it."""
        if not self.gone or self._task is None:
            return False
        self._task.uncancel()
        return True

    def finish(self) -> None:
        self._task = None
        self._watch.cancel()


def new_request_id() -> str:
    return "req_" + os.urandom(12).hex()


def valid_request_id(value: bytes) -> str | None:
    """A client's X-Request-ID is echoed only if short and printable ASCII."""
    if 0 < len(value) <= 128 and value.isascii():
        text = value.decode("ascii")
        if text.isprintable():
            return text
    return None


@dataclass(slots=True)
class RequestHead:
    """What the hot path reads from the request headers, in one pass."""

    request_id: str
    authorization: str | None
    forwarded_for: str | None
    content_length: int | None
    forward: dict[str, str]


def read_head(scope: ASGIScope, not_forwarded: frozenset[bytes] = NOT_FORWARDED) -> RequestHead:
    request_id = authorization = forwarded_for = None
    content_length: int | None = None
    forward: dict[str, str] = {}
    for name, value in scope["headers"]:
        if name == b"authorization":
            authorization = value.decode("latin-1")
        elif name == b"x-request-id":
            request_id = valid_request_id(value)
        elif name == b"content-length":
            content_length = int(value) if value.isdigit() else None
        elif name == b"x-forwarded-for":
            # Several header lines are one list (RFC 9110 §5.3), in order.
            text = value.decode("latin-1")
            forwarded_for = text if forwarded_for is None else f"{forwarded_for}, {text}"
        elif name not in not_forwarded:
            forward[name.decode("latin-1")] = value.decode("latin-1")
    return RequestHead(
        request_id or new_request_id(), authorization, forwarded_for, content_length, forward
    )


async def read_body(
    receive: Receive, limit: int, declared: int | None, stall: float | None = None
) -> bytes:
    """The request body, at most ``limit`` bytes. ``stall`` bounds each wait for the next part
    of it; only where the server does not (granian: uvicorn's protocol does it for free)."""
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit} bytes")
    message = await (receive() if stall is None else _within(receive, stall))
    if message["type"] == "http.disconnect":
        raise ClientGone
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        return body
    parts = [body]
    size = len(body)
    while message.get("more_body", False):
        message = await (receive() if stall is None else _within(receive, stall))
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


async def _within(receive: Receive, stall: float) -> Message:
    try:
        async with asyncio.timeout(stall):
            return await receive()
    except TimeoutError:
        raise RequestTimeout(
            f"the request body stalled for more than {stall:g}s", headers={"connection": "close"}
        ) from None


def parse_json_object(body: bytes) -> dict[str, object]:
    if not body:
        raise InvalidJSON("the request body is empty; expected a JSON object")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(f"the request body is not valid JSON: {exc.msg}") from None
    if not isinstance(payload, dict):
        raise InvalidJSON("the request body must be a JSON object")
    return payload


async def send_bytes(
    send: Send,
    status: int,
    body: bytes,
    headers: Headers,
    content_type: bytes = b"application/json",
) -> None:
    headers.append((b"content-type", content_type))
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Send, status: int, payload: object, headers: Headers) -> None:
    await send_bytes(send, status, orjson.dumps(payload), headers)


async def send_error(
    send: Send, exc: GatewayError, request_id: str, trace_id: str | None = None
) -> None:
    headers: Headers = [(b"x-request-id", request_id.encode())]
    for name, value in exc.headers.items():
        headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))
    try:
        await send_json(send, exc.status, exc.body(request_id, trace_id), headers)
    except OSError as gone:  # some servers raise when the client has left
        raise ClientGone from gone
