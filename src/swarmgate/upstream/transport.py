"""The HTTP transport to model servers: the one place that knows aiohttp.

aiohttp with one pooled keep-alive session per upstream origin, opened on first use (so a
deployment added at run time just works): measured here, httpx was 8.5x slower under
concurrency. aiohttp's own timeouts bound only the TCP connect; the first-byte, idle and total
bounds are the ``Watchdog``'s. Every aiohttp error is mapped here, once, into the error tree:
on the head (``send``) and while the body or the chunks are read, so nothing above this module
catches ``aiohttp.*``. ``upstream/memory.py`` is its in-memory twin.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from urllib.parse import urlsplit

import aiohttp

from swarmgate.errors import UpstreamBroken, UpstreamError, UpstreamUnreachable

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
        self._sessions: dict[str, aiohttp.ClientSession] = {}  # by origin
        self._by_base: dict[str, tuple[aiohttp.ClientSession, str]] = {}  # (session, origin)
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    def _session(self, base_url: str) -> tuple[aiohttp.ClientSession, str]:
        # Called on the event loop (the session needs it), the first time an origin is used.
        origin = origin_of(base_url)
        session = self._sessions.get(origin)
        if session is None:
            connector = aiohttp.TCPConnector(
                limit=0, keepalive_timeout=30, ttl_dns_cache=60, enable_cleanup_closed=False
            )
            session = self._sessions[origin] = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None),
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
                auto_decompress=False,
                raise_for_status=False,
            )
        self._by_base[base_url] = (session, origin)
        return session, origin

    def _timeout(self, connect: float) -> aiohttp.ClientTimeout:
        timeout = self._timeouts.get(connect)
        if timeout is None:
            timeout = self._timeouts[connect] = aiohttp.ClientTimeout(
                total=None, sock_connect=connect
            )
        return timeout

    async def send(
        self, base_url: str, path: str, body: bytes, headers: dict[str, str], connect: float
    ) -> HttpResponse:
        """Send the request; return once the response head has arrived."""
        session, origin = self._by_base.get(base_url) or self._session(base_url)
        try:
            response = await session.post(
                base_url + path,
                data=body,
                headers=headers,
                allow_redirects=False,
                timeout=self._timeout(connect),
            )
        except _UNREACHABLE as exc:
            raise UpstreamUnreachable(f"could not reach {origin} ({type(exc).__name__})") from exc
        except aiohttp.ClientResponseError as exc:
            raise UpstreamError(f"sent an invalid HTTP response ({exc.message})") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"request to {origin} failed ({type(exc).__name__})") from exc
        return HttpResponse(response)

    async def close(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        self._by_base.clear()
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
