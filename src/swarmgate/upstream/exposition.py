"""Reading a model server's ``/metrics``: the scraper's seam to the outside world.

Apart from ``upstream/transport.py`` because its needs differ: a GET whose body is read whole
and small, bounded as a whole, on a session of its own whose connections never delay an
inference request's. ``MemoryExpositions`` is its in-memory twin. Every aiohttp error is
mapped here into ``UpstreamError``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Protocol

import aiohttp

from swarmgate.errors import UpstreamError

# A vLLM exposition with its histograms is some tens of KB; more is not a metrics page.
MAX_BYTES = 4 * 1024 * 1024


class Expositions(Protocol):
    async def get(self, url: str, timeout: float) -> str:
        """The exposition at ``url``; ``UpstreamError`` if there is none within ``timeout``."""
        ...

    async def close(self) -> None: ...


class HttpExpositions:
    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    async def get(self, url: str, timeout: float) -> str:
        session = self._session
        if session is None:  # opened on the event loop, on first use
            session = self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=4.0),
                skip_auto_headers=("User-Agent",),
            )
        try:
            async with session.get(
                url, allow_redirects=False, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as response:
                if response.status != 200:
                    raise UpstreamError(f"{url} answered {response.status}")
                body = await response.content.read(MAX_BYTES + 1)
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"{url}: {type(exc).__name__}: {exc}") from exc
        except TimeoutError as exc:
            raise UpstreamError(f"{url}: no answer within {timeout} s") from exc
        if len(body) > MAX_BYTES:
            raise UpstreamError(f"{url}: more than {MAX_BYTES} bytes")
        return body.decode("utf-8", "replace")

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()


class MemoryExpositions:
    """Expositions by URL; a missing URL fails, one mapped to None never answers."""

    def __init__(self, pages: Mapping[str, str | None] | None = None) -> None:
        self.pages: dict[str, str | None] = dict(pages or {})
        self.requested: list[str] = []

    async def get(self, url: str, timeout: float) -> str:
        self.requested.append(url)
        if url not in self.pages:
            raise UpstreamError(f"{url}: unreachable")
        page = self.pages[url]
        if page is None:
            await asyncio.sleep(timeout)
            raise UpstreamError(f"{url}: no answer within {timeout} s")
        return page

    async def close(self) -> None:
        return None
