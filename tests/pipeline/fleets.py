"""Tiny in-process gateways for tests of the stages: the real request path on the in-memory
transport, with an authenticator that lets everyone in."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from swarmgate.api.v1 import Inference
from swarmgate.auth.roles import default_scopes
from swarmgate.config import parse_settings
from swarmgate.observability.metrics import Metrics
from swarmgate.pipeline.accounting import Accounting
from swarmgate.pipeline.call import Caller
from swarmgate.pipeline.queueing import Queueing
from swarmgate.pipeline.stages import Admission
from swarmgate.routing.fleet import Fleet
from swarmgate.routing.plan import Router
from swarmgate.types import Principal, Role
from swarmgate.upstream.memory import Handler, MemoryTransport

USER = Principal("tester", Role.USER, default_scopes(Role.USER))


class LetIn:
    """Everyone is ``principal``; ``Authorization: Tier <tier>:<key>`` is that key of that tier."""

    def __init__(self, principal: Principal = USER) -> None:
        self.principal = principal

    async def authenticate(self, authorization: str | None, *args: Any) -> Principal:
        if authorization and authorization.startswith("Tier "):
            tier, _, key = authorization.removeprefix("Tier ").partition(":")
            return Principal(key, Role.USER, USER.scopes, tier=tier, key_id=key)
        return self.principal


class Gateway:
    """The inference handler over ``deployments`` (URLs of model ``m``) on ``handler``."""

    def __init__(
        self,
        handler: Handler,
        *urls: str,
        deployment: dict[str, Any] | None = None,
        server: dict[str, Any] | None = None,
        admission: Admission | None = None,
        principal: Principal = USER,
        limits: dict[str, Any] | None = None,
        scrape: dict[str, Any] | None = None,
        accounting: dict[str, Any] | None = None,
        **model: Any,
    ) -> None:
        deployments = [{"url": u, "api_key_env": "UP_KEY", **(deployment or {})} for u in urls]
        settings = parse_settings(
            {
                "models": {"m": {"deployments": deployments, **model}},
                "server": server or {},
                "limits": limits or {},
                "scrape": scrape or {},
            },
            {"UP_KEY": "up-secret"},
        )
        self.transport = MemoryTransport(handler)
        self.metrics = Metrics()
        self.fleet = Fleet(settings)
        self.inference = Inference(
            LetIn(principal),
            self.fleet,
            admission or Admission(settings.limits, metrics=self.metrics),
            Router(),
            Caller(self.transport, Queueing(settings.limits, self.metrics)),
            Accounting(self.metrics, **(accounting or {})),
            1 << 20,
            max_upload_bytes=settings.server.max_upload_bytes,
        )

    async def post(
        self,
        body: dict[str, Any] | bytes,
        path: str = "/v1/chat/completions",
        headers: list[tuple[bytes, bytes]] | None = None,
        receive: Callable[[], Awaitable[dict[str, Any]]] | None = None,
        client: Answer | None = None,
    ) -> Answer:
        scope = {
            "type": "http",
            "method": "POST",
            "path": path,
            "headers": [(b"x-request-id", b"rid-1"), *(headers or [])],
            "client": ("127.0.0.1", 5000),
        }
        sent = True

        async def first_receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                sent = False
                raw = body if isinstance(body, bytes) else orjson.dumps(body)
                return {"type": "http.request", "body": raw}
            if receive is not None:
                return await receive()
            await _forever()
            raise AssertionError("unreachable")

        answer = client or Answer()
        await self.inference(scope, first_receive, answer.send)
        return answer

    def in_flight(self) -> list[int]:
        return [s.in_flight for s in self.fleet.snapshot.states()]

    def sample(self, name: str, **labels: str) -> float | None:
        self.metrics.flush()  # as a scrape does
        return self.metrics.registry.get_sample_value(name, labels)


async def _forever() -> None:
    import asyncio

    await asyncio.Event().wait()


class Answer:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    async def send(self, message: dict[str, Any]) -> None:
        self.messages.append(message)

    @property
    def status(self) -> int:
        return int(self.messages[0]["status"])

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(self.messages[0]["headers"])

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages[1:])

    def json(self) -> Any:
        return orjson.loads(self.body)
