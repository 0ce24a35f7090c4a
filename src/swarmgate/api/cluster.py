"""Fleet management (seeds 001 and 002): the cluster's status and its workers.

(No ``from __future__ import annotations`` here: FastAPI must resolve the route signatures.)

- ``GET /v1/cluster/status`` and ``GET /api/v1/cluster/status`` (``cluster:read``): every
  deployment's health, circuit, load and models, and a summary;
- ``GET /api/v1/workers`` and ``GET /api/v1/workers/{id}`` (``cluster:read``);
- ``POST /api/v1/workers`` (add), ``POST /api/v1/workers/{id}/drain``,
  ``POST /api/v1/workers/{id}/restart``, ``DELETE /api/v1/workers/{id}`` (``cluster:write``);
- ``GET /models/status`` (no authentication, an operations route on the plain ASGI path).

A worker is a deployment and its id the deployment's name. The changes are the registry's
(``routing/registry.py``); this module maps HTTP onto them and audits each one. Figures that
other parts of the gateway may attach to a deployment's state (its circuit, the queue and
cache use scraped from its ``/metrics``) are read with ``getattr``: shown when present.
"""

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query, Request
from fastapi.routing import APIRoute

from swarmgate.api import openapi
from swarmgate.api.management import principal_of, privileged, request_id_of
from swarmgate.auth.roles import require
from swarmgate.auth.security import Security
from swarmgate.pipeline.asgi import send_json
from swarmgate.routing.fleet import DeploymentState, Pool
from swarmgate.routing.registry import Registry
from swarmgate.types import ApiScope, ASGIScope, Principal, Receive, Send

# The prefixes of the native face (/api/v1) that this module's routes serve.
NATIVE_PREFIXES = ("/api/v1/workers", "/api/v1/cluster/")
DEFAULT_WAIT = 30.0  # seconds a restart or removal waits for the requests in flight
MAX_WAIT = 3600.0
_UNKNOWN_WORKER: dict[int | str, dict[str, Any]] = {404: openapi.error("No such worker")}
_WORKER_ID = Annotated[str, Path(description="The worker's id: its deployment's name")]
_WAIT = Annotated[
    float,
    Query(ge=0, le=MAX_WAIT, description="Seconds to wait for the requests in flight here"),
]


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _circuit(state: DeploymentState) -> dict[str, Any]:
    """Its circuit (closed, open, half_open) and why it is out of rotation (None: it is in)."""
    health = state.health
    circuit = health.circuit(health.clock()).name.lower()
    return {"circuit": circuit, "down_reason": health.why_down()}


def _scraped(state: DeploymentState) -> dict[str, Any]:
    """Its own figures as last scraped from its /metrics (routing/scrape.py), when there are."""
    load = state.load
    if load is None:
        return {}
    out: dict[str, Any] = {"queue_waiting": load.waiting, "queue_running": load.running}
    if load.kv_usage is not None:
        out["kv_cache_usage"] = load.kv_usage
    return out


def status_of(state: DeploymentState) -> str:
    if state.draining:
        return "draining"
    return "healthy" if state.healthy else "unhealthy"


def worker_view(state: DeploymentState, source: str) -> dict[str, Any]:
    d = state.deployment
    return {
        "id": d.name,
        "object": "worker",
        "model": d.model,
        "models": [d.model],
        "upstream_model": d.upstream_model,
        "url": d.url,
        "status": status_of(state),
        "healthy": state.healthy,
        "draining": state.draining,
        "in_flight": state.in_flight,
        "max_concurrent": d.max_concurrent,
        "weight": d.weight,
        "source": source,
        **_circuit(state),
        **_scraped(state),
    }


def model_status(pool: Pool) -> dict[str, Any]:
    members = pool.members
    healthy = sum(1 for m in members if m.healthy)
    # Why each deployment out of rotation is (circuit open, ejected, probes failing).
    down = {m.name: why for m in members if (why := m.health.why_down()) is not None}
    draining = sum(1 for m in members if m.draining)
    serving = sum(1 for m in members if m.healthy and not m.draining)
    if serving == len(members):
        status = "healthy"
    elif serving:
        status = "degraded"
    else:
        status = "unhealthy"
    return {
        "status": status,
        "type": str(pool.type),
        "balancer": pool.strategy,  # the default's choice shows here (Settings.balancing_of)
        "deployments": len(members),
        "usable": pool.usable,
        "healthy": healthy,
        "draining": draining,
        "in_flight": sum(m.in_flight for m in members),
        "capacity": pool.capacity,
        "workers": [m.name for m in members],
        "down": down,
    }


class Cluster:
    """The status documents, from the fleet's current snapshot (pure, no I/O)."""

    def __init__(self, name: str, registry: Registry) -> None:
        self.name = name
        self.registry = registry
        self.ready = False  # set by the lifespan, as the readiness route's

    def workers(self) -> list[dict[str, Any]]:
        registry = self.registry
        return [worker_view(s, registry.source(s.name)) for s in registry.fleet.snapshot.states()]

    def status(self) -> dict[str, Any]:
        workers = self.workers()
        pools = self.registry.fleet.snapshot.pools
        models = {name: model_status(pool) for name, pool in pools.items()}
        healthy = sum(1 for w in workers if w["healthy"])
        if not any(m["status"] != "unhealthy" for m in models.values()):
            status = "unhealthy"
        elif all(m["status"] == "healthy" for m in models.values()):
            status = "healthy"
        else:
            status = "degraded"
        return {
            "status": status,
            "gateway": self.name,
            "timestamp": _now_iso(),
            "summary": {
                "workers": len(workers),
                "healthy": healthy,
                "draining": sum(1 for w in workers if w["draining"]),
                "in_flight": sum(w["in_flight"] for w in workers),
                "capacity": sum(w["max_concurrent"] for w in workers),
                "models": len(models),
            },
            "models": models,
            "workers": workers,
        }

    def models_document(self) -> dict[str, Any]:
        """``/models/status`` (seed 004): each model's state and its deployments'."""
        models = {name: model_status(p) for name, p in self.registry.fleet.snapshot.pools.items()}
        return {
            "status": "ready" if self.ready else "not_ready",
            "timestamp": _now_iso(),
            "models": models,
        }

    async def models_status(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        await send_json(send, 200, self.models_document(), [(b"cache-control", b"no-store")])


class _Access:
    def __init__(self, security: Security) -> None:
        self.security = security

    async def reader(self, request: Request) -> Principal:
        principal = await principal_of(self.security.authenticator, request)
        require(principal, ApiScope.CLUSTER_READ)
        return principal

    async def writer(self, request: Request) -> Principal:
        security = self.security
        return await privileged(
            security.settings.auth,
            security.authenticator,
            request,
            ApiScope.CLUSTER_WRITE,
            "fleet changes are closed: authentication is disabled (auth.enabled: false); "
            "set auth.open_admin_without_auth: true to open them to every caller",
        )

    def audit(
        self, request: Request, who: Principal, action: str, target: str, **details: Any
    ) -> None:
        self.security.audit.record(
            action,
            actor=who.key_id or who.subject,
            target=target,
            client_ip=request.client.host if request.client else None,
            request_id=request_id_of(request),
            details=details,
        )


def build_cluster_router(security: Security, cluster: Cluster) -> APIRouter:
    router = APIRouter(tags=["cluster"], responses=openapi.AUTH_ERRORS)
    access = _Access(security)
    registry = cluster.registry
    Reader = Annotated[Principal, Depends(access.reader)]
    Writer = Annotated[Principal, Depends(access.writer)]

    def actor(who: Principal) -> str | None:
        return who.key_id or who.subject

    @router.get("/v1/cluster/status", summary="The cluster: every worker's health and load")
    async def cluster_status(who: Reader) -> dict[str, Any]:
        return cluster.status()

    router.add_api_route(
        "/api/v1/cluster/status",
        cluster_status,
        methods=["GET"],
        summary="The cluster (seed 001's path): every worker's health and load",
    )

    @router.get("/api/v1/workers", summary="List the workers (deployments)")
    async def list_workers(who: Reader) -> dict[str, Any]:
        workers = cluster.workers()
        return {"object": "list", "data": workers, "total": len(workers)}

    @router.get("/api/v1/workers/{worker_id}", summary="One worker", responses=_UNKNOWN_WORKER)
    async def get_worker(worker_id: _WORKER_ID, who: Reader) -> dict[str, Any]:
        return worker_view(registry.find(worker_id), registry.source(worker_id))

    @router.post(
        "/api/v1/workers",
        status_code=201,
        summary="Add a worker (a deployment) at run time; stored, it outlives restarts",
        responses={409: openapi.error("A worker of that name exists")},
    )
    async def add_worker(
        request: Request,
        who: Writer,
        body: Annotated[
            dict[str, Any],
            Body(
                description="`model` (a configured model) and a deployment as in the config "
                "file: `url`, and optionally `name`, `upstream_model` (the config's `model`), "
                "`weight`, `max_concurrent`, prices, `timeouts`, `keepalive`, `api_key_env`",
                examples=[{"model": "llama", "url": "http://10.0.0.7:8000", "max_concurrent": 8}],
            ),
        ],
    ) -> dict[str, Any]:
        state = await registry.add(body, actor(who))
        access.audit(
            request,
            who,
            "worker.add",
            state.name,
            model=state.deployment.model,
            url=state.deployment.url,
        )
        return worker_view(state, registry.source(state.name))

    @router.post(
        "/api/v1/workers/{worker_id}/drain",
        summary="Drain a worker: no new requests; those in flight finish",
        responses=_UNKNOWN_WORKER,
    )
    async def drain_worker(worker_id: _WORKER_ID, request: Request, who: Writer) -> dict[str, Any]:
        state = await registry.drain(worker_id, actor(who))
        access.audit(request, who, "worker.drain", worker_id, in_flight=state.in_flight)
        return worker_view(state, registry.source(worker_id))

    @router.post(
        "/api/v1/workers/{worker_id}/restart",
        summary="Drain a worker, wait for its requests in flight (bounded), readmit it",
        responses=_UNKNOWN_WORKER,
    )
    async def restart_worker(
        worker_id: _WORKER_ID, request: Request, who: Writer, wait: _WAIT = DEFAULT_WAIT
    ) -> dict[str, Any]:
        state, left = await registry.restart(worker_id, actor(who), wait)
        access.audit(request, who, "worker.restart", worker_id, in_flight_left=left)
        return {**worker_view(state, registry.source(worker_id)), "in_flight_left": left}

    @router.delete(
        "/api/v1/workers/{worker_id}",
        summary="Drain a worker, wait for its requests in flight (bounded), remove it",
        responses={**_UNKNOWN_WORKER, 409: openapi.error("The model's last worker")},
    )
    async def remove_worker(
        worker_id: _WORKER_ID, request: Request, who: Writer, wait: _WAIT = DEFAULT_WAIT
    ) -> dict[str, Any]:
        state, left = await registry.remove(worker_id, actor(who), wait)
        model = state.deployment.model
        access.audit(request, who, "worker.remove", worker_id, model=model, in_flight_left=left)
        return {"id": worker_id, "object": "worker", "deleted": True, "in_flight_left": left}

    for route in router.routes:
        if isinstance(route, APIRoute):
            route.openapi_extra = {"security": [{"bearer": []}], **(route.openapi_extra or {})}
    return router
