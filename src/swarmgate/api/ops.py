"""Operations and discovery routes on the plain ASGI path: readiness, metrics, models.

These are polled by load balancers, Prometheus and SDKs, so they stay off the framework too.
"""

from __future__ import annotations

import time

from swarmgate.auth.roles import require
from swarmgate.errors import GatewayError, NotFound
from swarmgate.observability.metrics import Metrics
from swarmgate.pipeline.asgi import Headers, read_head, send_bytes, send_error, send_json
from swarmgate.routing.fleet import Fleet, Pool
from swarmgate.types import ApiScope, ASGIScope, Authenticator, Receive, Send


def model_object(pool: Pool, created: int) -> dict[str, object]:
    return {
        "id": pool.model,
        "object": "model",
        "created": created,
        "owned_by": pool.config.owned_by,
        "type": str(pool.type),
        "capabilities": list(pool.config.capabilities),
        "aliases": list(pool.config.aliases),
        "deployments": len(pool.members),
    }


def _pool_status(pool: Pool) -> dict[str, object]:
    """Deployments configured, usable now (up, with a free slot), up (circuit not open, not
    ejected, probes passing), and why each of the others is down."""
    down = {}
    for m in pool.members:
        why = m.health.why_down()
        if why is not None:
            down[m.name] = why
    return {
        "deployments": len(pool.members),
        "usable": pool.usable,
        "healthy": len(pool.members) - len(down),
        "down": down,
    }


class Ops:
    def __init__(self, fleet: Fleet, metrics: Metrics, authenticator: Authenticator) -> None:
        self.fleet = fleet
        self.metrics = metrics
        self.authenticator = authenticator
        self.created = int(time.time())
        self.ready = False  # set by the lifespan once upstream pools and the store are open

    def _status(self) -> dict[str, object]:
        models = {pool.model: _pool_status(pool) for pool in self.fleet.snapshot.pools.values()}
        # Saturation is reported, not a reason to be taken out of a load balancer's rotation;
        # nor is a model whose deployments are all down (its fallback response is served, and
        # the other gateway replicas share the same deployments).
        return {"status": "ready" if self.ready else "not_ready", "models": models}

    async def readiness(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        status = self._status()
        await send_json(send, 200 if status["status"] == "ready" else 503, status, [])

    async def prometheus(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        await send_bytes(send, 200, self.metrics.render(), [], Metrics.CONTENT_TYPE.encode())

    async def models(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        head = read_head(scope)
        headers: Headers = [(b"x-request-id", head.request_id.encode())]
        try:
            peer = scope.get("client")
            principal = await self.authenticator.authenticate(
                head.authorization, peer[0] if peer else None, head.forwarded_for, head.request_id
            )
            require(principal, ApiScope.MODELS_READ)
            path: str = scope["path"]
            snapshot = self.fleet.snapshot
            pools = [p for p in snapshot.pools.values() if principal.allows_model(p.model)]
            if path == "/v1/models":
                data = [model_object(p, self.created) for p in pools]
                await send_json(send, 200, {"object": "list", "data": data}, headers)
                return
            name = path.removeprefix("/v1/models/")
            pool = snapshot.resolve(name)
            if not principal.allows_model(pool.model):
                raise NotFound(f"The model {name!r} does not exist", param="model")
            await send_json(send, 200, model_object(pool, self.created), headers)
        except GatewayError as exc:
            await send_error(send, exc, head.request_id)
