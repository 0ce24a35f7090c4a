"""Connection limits uvicorn lacks: a bound on reading a request's head, on a stalled body, and
on the number of open connections, refused clearly past it.

uvicorn times out only idle keep-alive connections between two requests: a connection that
never sends a byte, or sends half a head, or announces a body and stalls, is kept open for
ever, and enough of them exhaust the process's file descriptors. ``GuardedHttpToolsProtocol``
is uvicorn's own httptools protocol with one timer per connection added, armed only while a
head or a body is incomplete at the end of a read. A request whose head and body arrive in one
read, the common case, arms nothing. (granian bounds heads itself: ``header_read_timeout``,
which also bounds a kept-alive connection waiting for its next request; bodies are bounded in
``pipeline/asgi.read_body`` under it.)

Past ``server.max_connections`` open connections, a new one is answered at once with a 503 in
OpenAI's error schema and closed, before its head is read.

uvicorn builds the protocol itself, in each worker, from an import string; the limits come
from the same configuration file the worker's app is built from (``SWARMGATE_CONFIG``), or are
attached by ``with_limits`` when the server runs in this process.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from swarmgate.config import Server, config_path_from_env, load_settings
from swarmgate.errors import ServiceUnavailable


def _refusal(limit: int) -> bytes:
    error = ServiceUnavailable(
        f"the gateway holds its maximum of {limit} connections; retry shortly",
        code="too_many_connections",
    )
    body = orjson.dumps(error.body())
    return (
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
        b"retry-after: 1\r\nconnection: close\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    limits: ClassVar[Server | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cls = type(self)
        if cls.limits is None:
            # A worker started from an import string: the limits of its configuration file.
            cls.limits = load_settings(config_path_from_env(), deployment_keys=False).server
        self._limits = cls.limits
        self._guard: asyncio.TimerHandle | None = None
        self._in_head = True  # a new connection owes its first head
        self._cycle: object = None  # the request cycle last seen
        self._since = 0.0  # when the head began, or the body's last byte arrived

    @classmethod
    def with_limits(cls, limits: Server) -> type[GuardedHttpToolsProtocol]:
        return type(cls.__name__, (cls,), {"limits": limits})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        limit = self._limits.max_connections
        if len(self.connections) >= limit:
            self.transport = transport
            transport.write(_refusal(limit))
            transport.close()
            return
        super().connection_made(transport)
        self._since = self.loop.time()
        self._arm(self._limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._in_head and not self._in_body():
            # Bytes while no request is being read: a new head starts with them. (Told here
            # rather than in on_message_begin: overriding a parser callback measured ~10% of
            # throughput, this test nothing.)
            self._in_head = True
            self._since = self.loop.time()
        super().data_received(data)
        # uvicorn makes a new cycle when a head completes; its ``more_body`` stays true until
        # the body is complete.
        cycle = self.cycle
        if cycle is not self._cycle:
            self._cycle = cycle
            self._in_head = False
        if self._in_body():
            self._since = self.loop.time()  # the body's last byte
            if self._guard is None:
                self._arm(self._limits.body_timeout)
        elif self._in_head:
            if self._guard is None:
                self._arm(self._limits.header_timeout)
        elif self._guard is not None:
            self._disarm()

    def _arm(self, delay: float) -> None:
        self._guard = self.loop.call_at(self._since + delay, self._check)

    def _disarm(self) -> None:
        if self._guard is not None:
            self._guard.cancel()
            self._guard = None

    def _in_body(self) -> bool:
        # Still true after an early answer (a 401 before the body was read): a body trickled
        # in after it must not hold the connection either.
        cycle = self.cycle
        return cycle is not None and cycle.more_body

    def _check(self) -> None:
        self._guard = None
        in_body = self._in_body()
        if self.transport.is_closing() or not (self._in_head or in_body):
            return  # between requests uvicorn's own keep-alive timer bounds the wait
        limit = self._limits.header_timeout if self._in_head else self._limits.body_timeout
        if self.loop.time() < self._since + limit:
            self._arm(limit)  # bytes came meanwhile: wait from the last one
            return
        # Mid-request, the app sees the client leave (http.disconnect) and lets go.
        self.transport.close()
