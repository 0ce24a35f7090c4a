"""The in-memory twin of the HTTP transport, for tests of the stages (httpx's MockTransport).

A handler gets each ``SentRequest`` and returns a ``MemoryResponse`` (a status, headers and a
body given whole or as chunks), or raises an error of ours (``UpstreamUnreachable`` to play a
server that cannot be reached). A chunk given as an exception is raised while the chunks are
read, as a stream breaking off mid-way would.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field

import orjson

from swarmgate.errors import UpstreamBroken
from swarmgate.types import Origin


@dataclass(frozen=True, slots=True)
class SentRequest:
    base_url: str
    path: str
    body: bytes
    headers: dict[str, str]

    def json(self) -> object:
        return orjson.loads(self.body)


@dataclass(slots=True)
class MemoryResponse:
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=lambda: {"content-type": "application/json"})
    # Whole or in chunks; an async iterable plays a server that takes its time between chunks.
    body: Iterable[bytes | BaseException] | AsyncIterable[bytes] = (b"{}",)
    closed: bool = False

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    async def _chunks(self) -> AsyncIterator[bytes]:
        if isinstance(self.body, AsyncIterable):
            async for part in self.body:
                yield part
            return
        for chunk in self.body:
            if isinstance(chunk, BaseException):
                raise UpstreamBroken("broke off the stream (in memory)") from chunk
            yield chunk

    def chunks(self) -> AsyncIterator[bytes]:
        return self._chunks()

    def close(self) -> None:
        self.closed = True

    @classmethod
    def json(cls, payload: object, status: int = 200) -> MemoryResponse:
        return cls(status, {"content-type": "application/json"}, (orjson.dumps(payload),))

    @classmethod
    def sse(cls, *events: bytes | BaseException) -> MemoryResponse:
        return cls(200, {"content-type": "text/event-stream"}, events)

    @classmethod
    def sse_from(cls, events: AsyncIterable[bytes]) -> MemoryResponse:
        return cls(200, {"content-type": "text/event-stream"}, events)


Handler = Callable[[SentRequest], Awaitable[MemoryResponse]]


class MemoryTransport:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.sent: list[SentRequest] = []
        self.probes: list[SentRequest] = []
        self.probe_handler: Handler | None = None
        self.closed = False

    async def send(
        self, origin: Origin, path: str, body: bytes, headers: dict[str, str]
    ) -> MemoryResponse:
        request = SentRequest(origin.base_url, path, body, dict(headers))
        self.sent.append(request)
        return await self.handler(request)

    async def probe(self, origin: Origin, path: str, headers: dict[str, str]) -> int:
        """A probe goes to ``probe_handler`` (default: a 200), kept apart from ``sent``."""
        request = SentRequest(origin.base_url, path, b"", dict(headers))
        self.probes.append(request)
        if self.probe_handler is None:
            return 200
        return (await self.probe_handler(request)).status

    async def close(self) -> None:
        self.closed = True
