"""The Python floor: the least a plain-ASGI proxy can do to forward a chat completion.

No framework, no validation, one pooled aiohttp session, the body passed through untouched. The
benchmark compares swarmgate against this to show what its features cost. Upstream base URL from
``BENCH_UPSTREAM``. Run: ``uvicorn minimal_proxy:app`` or ``granian --interface asgi ...``.
"""

from __future__ import annotations

import os
from typing import Any

import aiohttp


class MinimalProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            if self.session is not None:
                await self.session.close()
            await send({"type": "lifespan.shutdown.complete"})
            return
        if self.session is None:  # created lazily: it must belong to the worker's event loop
            self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = {"content-type": "application/json"}
        url = self.upstream + scope["path"]
        async with self.session.request(scope["method"], url, data=body, headers=headers) as up:
            payload = await up.read()
            out = [(b"content-type", up.headers.get("content-type", "").encode())]
            await send({"type": "http.response.start", "status": up.status, "headers": out})
            await send({"type": "http.response.body", "body": payload})


app = MinimalProxy(os.environ.get("BENCH_UPSTREAM", "http://127.0.0.1:18080"))
