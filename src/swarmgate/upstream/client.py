"""The pooled keep-alive HTTP client to deployments: the one seam to model servers.

aiohttp with one session (and connection pool) per upstream origin: measured here, httpx was
8.5x slower under concurrency. aiohttp's own timeouts bound only the TCP connect; the first
byte, idle and total bounds are the ``Watchdog``'s. aiohttp errors are translated here, once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from urllib.parse import urlsplit

import aiohttp

from swarmgate.errors import UpstreamError
from swarmgate.routing.pool import Backend

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


class ConnectFailed(UpstreamError):
    """The request never reached the deployment: safe to try another one."""


class UpstreamClient:
    def __init__(self) -> None:
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self._by_backend: dict[int, aiohttp.ClientSession] = {}

    @staticmethod
    def _origin(base_url: str) -> str:
        parts = urlsplit(base_url)
        return f"{parts.scheme}://{parts.netloc}"

    async def start(self, backends: Iterable[Backend]) -> None:
        """Open the pools; needs the running loop, so it is called from the lifespan."""
        for backend in backends:
            origin = self._origin(backend.base_url)
            if origin in self._sessions:
                self._by_backend[id(backend)] = self._sessions[origin]
                continue
            connector = aiohttp.TCPConnector(
                limit=0, keepalive_timeout=30, ttl_dns_cache=60, enable_cleanup_closed=False
            )
            self._sessions[origin] = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=backend.timeouts.connect),
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
                auto_decompress=False,
                raise_for_status=False,
            )
            self._by_backend[id(backend)] = self._sessions[origin]

    def session(self, backend: Backend) -> aiohttp.ClientSession:
        return self._by_backend[id(backend)]

    async def post(
        self, backend: Backend, path: str, body: bytes, headers: dict[str, str]
    ) -> aiohttp.ClientResponse:
        """Send the request; return once the response headers have arrived."""
        try:
            return await self.session(backend).post(
                backend.base_url + path, data=body, headers=headers, allow_redirects=False
            )
        except (
            aiohttp.ClientConnectorError,
            aiohttp.ConnectionTimeoutError,
            aiohttp.ServerDisconnectedError,
        ) as exc:
            raise ConnectFailed(
                f"could not reach deployment {backend.name}: {type(exc).__name__}"
            ) from exc
        except aiohttp.ClientResponseError as exc:
            raise UpstreamError(f"deployment {backend.name} sent an invalid HTTP response") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(
                f"request to deployment {backend.name} failed: {type(exc).__name__}"
            ) from exc

    async def close(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        self._by_backend.clear()
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
