"""Trusted hosts: a request whose ``Host`` is not one of ``server.trusted_hosts`` is refused.

Starlette's TrustedHostMiddleware answers that with a text/plain 400; every error of ours is
JSON in OpenAI's schema with the request id, so this is the same check with our error. Patterns
are exact host names, ``*.example.com`` (any subdomain) or ``*`` (any host); the port is ignored.
"""

from __future__ import annotations

from swarmgate.errors import BadRequest
from swarmgate.pipeline.asgi import read_head, send_error
from swarmgate.types import ASGIApp, ASGIScope, Receive, Send


class TrustedHosts:
    def __init__(self, app: ASGIApp, allowed: tuple[str, ...]) -> None:
        self.app = app
        self.any = "*" in allowed
        self.exact = frozenset(h.lower() for h in allowed if not h.startswith("*"))
        self.suffixes = tuple(h[1:].lower() for h in allowed if h.startswith("*."))

    def allows(self, host: str) -> bool:
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host  # drop a port
        name = name.lower()
        return self.any or name in self.exact or name.endswith(self.suffixes)

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and not self.any:
            host = next((v for k, v in scope["headers"] if k == b"host"), b"")
            if not self.allows(host.decode("latin-1")):
                if scope["type"] == "http":
                    error = BadRequest("invalid Host header", code="invalid_host")
                    await send_error(send, error, read_head(scope).request_id)
                else:
                    await send({"type": "websocket.close", "code": 1008})
                return
        await self.app(scope, receive, send)
