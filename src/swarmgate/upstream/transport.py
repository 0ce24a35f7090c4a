"""The HTTP transport to model servers: the one place that knows aiohttp.

aiohttp with one pooled keep-alive session per upstream origin (and keep-alive time), opened on
first use (so a deployment added at run time just works): measured here, httpx was 8.5x slower
under concurrency. aiohttp's own timeouts bound only the TCP connect; the first-byte, idle and
total bounds are the ``Watchdog``'s. Every aiohttp error is mapped here, once, into the error
tree: on the head (``send``) and while the body or the chunks are read, so nothing above this
module catches ``aiohttp.*``. ``upstream/memory.py`` is its in-memory twin.

A pooled connection the server closed while it sat idle is not a failed request. The server's
close can cross our next request on the wire; the request then fails before any byte of an
answer, with the server never having read it. Such a request is sent once more, on another
connection, here, invisible above. (aiohttp does this itself only for idempotent methods.) The
pool's keep-alive time is kept below the servers' own (``Origin.keepalive``, 4 s by default,
below the 5 s of uvicorn, which vLLM and SGLang serve with, and of llama.cpp's server), so the
race is rare to begin with.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import AsyncIterator, Mapping
from urllib.parse import urlsplit

import aiohttp

from swarmgate.errors import UpstreamBroken, UpstreamError, UpstreamUnreachable
from swarmgate.types import Origin

# Hop-by-hop headers (RFC 9110 §7.6.1) and headers the gateway sets itself: never forwarded.
NOT_FORWARDED = frozenset(
    {
        b"authorization",
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
        b"content-type",
        b"accept-encoding",
        b"cookie",
        b"x-request-id",
        b"x-forwarded-for",
        b"x-real-ip",
        b"expect",
        # Credentials and routing facts meant for an OpenAI-style endpoint, not ours to pass on:
        b"openai-organization",
        b"openai-project",
        b"api-key",
        b"x-api-key",
        b"forwarded",
        b"x-forwarded-host",
        b"x-forwarded-proto",
        b"x-forwarded-port",
    }
)
# Failures that mean the request never reached the server (or was never read by it).
_UNREACHABLE = (
    aiohttp.ClientConnectorError,
    aiohttp.ConnectionTimeoutError,
    aiohttp.ServerDisconnectedError,
)
_CLOSED_BY_PEER = frozenset({errno.ECONNRESET, errno.EPIPE})


def _closed_while_idle(exc: aiohttp.ClientError) -> bool:
    """The failure of a request on a connection the server had already closed."""
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        return False  # a new connection that failed: nothing was pooled
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return True
    if not isinstance(exc, aiohttp.ClientOSError):
        return False
    # "Can not write request body": aiohttp keeps the reset as the cause, without an errno.
    cause = exc.__cause__
    return exc.errno in _CLOSED_BY_PEER or isinstance(cause, ConnectionResetError | BrokenPipeError)


def origin_of(base_url: str) -> str:
    parts = urlsplit(base_url)
    return f"{parts.scheme}://{parts.netloc}"


class _Chunks:
    """The body as it arrives, chunk by chunk (``iter_any`` with its errors mapped)."""

    __slots__ = ("_content",)

    def __init__(self, content: aiohttp.StreamReader) -> None:
        self._content = content

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> bytes:
        try:
            chunk = await self._content.readany()
        except aiohttp.ClientError as exc:
            raise UpstreamBroken(f"broke off the stream ({type(exc).__name__})") from exc
        if not chunk:
            raise StopAsyncIteration
        return chunk


class HttpResponse:
    __slots__ = ("_response", "headers", "status")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.headers: Mapping[str, str] = response.headers  # case-insensitive

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except aiohttp.ClientError as exc:
            raise UpstreamBroken(f"broke off the response ({type(exc).__name__})") from exc
        finally:
            self._response.release()

    def chunks(self) -> AsyncIterator[bytes]:
        return _Chunks(self._response.content)

    def close(self) -> None:
        self._response.close()


class HttpTransport:
    def __init__(self) -> None:
        # By (origin, keep-alive); None: one connection per request, for resends.
        self._sessions: dict[tuple[str, float | None], aiohttp.ClientSession] = {}
        self._by_origin: dict[Origin, aiohttp.ClientSession] = {}
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    def _session(self, origin: Origin, keepalive: float | None) -> aiohttp.ClientSession:
        # Called on the event loop (a session needs it), the first time an origin is used.
        key = (origin_of(origin.base_url), keepalive)
        session = self._sessions.get(key)
        if session is None:
            if keepalive is None:
                connector = aiohttp.TCPConnector(limit=0, force_close=True, ttl_dns_cache=60)
            else:
                connector = aiohttp.TCPConnector(
                    limit=0, keepalive_timeout=keepalive, ttl_dns_cache=60
                )
            session = self._sessions[key] = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None),
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
                auto_decompress=False,
                raise_for_status=False,
            )
        if keepalive is not None:
            self._by_origin[origin] = session
        return session

    def _timeout(self, connect: float) -> aiohttp.ClientTimeout:
        timeout = self._timeouts.get(connect)
        if timeout is None:
            timeout = self._timeouts[connect] = aiohttp.ClientTimeout(
                total=None, sock_connect=connect
            )
        return timeout

    async def send(
        self, origin: Origin, path: str, body: bytes, headers: dict[str, str]
    ) -> HttpResponse:
        """Send the request; return once the response head has arrived."""
        session = self._by_origin.get(origin) or self._session(origin, origin.keepalive)
        url = origin.base_url + path
        timeout = self._timeout(origin.connect)
        try:
            response = await session.post(
                url, data=body, headers=headers, allow_redirects=False, timeout=timeout
            )
        except aiohttp.ClientError as exc:
            if not _closed_while_idle(exc):
                raise _mapped(exc, origin) from exc
            # Once more, on a connection of its own (another pooled one may be as stale).
            try:
                response = await self._session(origin, None).post(
                    url, data=body, headers=headers, allow_redirects=False, timeout=timeout
                )
            except aiohttp.ClientError as again:
                raise _mapped(again, origin) from again
        return HttpResponse(response)

    async def probe(self, origin: Origin, path: str, headers: dict[str, str]) -> int:
        """GET ``path`` on a connection of the origin's pool; the body is read and dropped."""
        session = self._by_origin.get(origin) or self._session(origin, origin.keepalive)
        try:
            async with session.get(
                origin.base_url + path,
                headers=headers,
                allow_redirects=False,
                timeout=self._timeout(origin.connect),
            ) as response:
                await response.read()
                return response.status
        except aiohttp.ClientError as exc:
            raise _mapped(exc, origin) from exc

    async def close(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        self._by_origin.clear()
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)


def _mapped(exc: aiohttp.ClientError, origin: Origin) -> UpstreamError:
    where = origin_of(origin.base_url)
    if isinstance(exc, _UNREACHABLE):
        return UpstreamUnreachable(f"could not reach {where} ({type(exc).__name__})")
    if isinstance(exc, aiohttp.ClientResponseError):
        return UpstreamError(f"sent an invalid HTTP response ({exc.message})")
    return UpstreamError(f"request to {where} failed ({type(exc).__name__}: {exc})")
