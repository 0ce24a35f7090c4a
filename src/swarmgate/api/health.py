"""Health as the seeds ask for it: ``/health`` (seed 003's ``/gateway/health`` too),
``/health/live``, and the root document.

``/health`` answers seed 004's fields (``status``, ``gateway``, ``models``, ``timestamp``) and
seed 001's (``checks`` for the database, Redis and each model's deployments, ``version``):

- ``healthy`` (200): everything is up;
- ``degraded`` (200): the database or Redis is down, or a model has lost some deployments, but
  requests are served (keys in use keep working through a database outage);
- ``unhealthy`` (503): nothing can be served — no model has a usable deployment — or the
  gateway is starting or shutting down.

A call does no I/O: the database and Redis are pinged by a background task every
``monitoring.health_interval`` seconds (each ping bounded; the result is also the
``gateway_dependency_up`` gauge), and deployments are judged by what
traffic has seen of them (``DeploymentState.healthy``). So a load balancer's probe is answered
at once even while the database hangs. ``/health/live`` checks nothing at all, so that a
liveness probe never restarts gateways because a shared database is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import Any

from swarmgate import __version__
from swarmgate.observability.metrics import Metrics
from swarmgate.pipeline.asgi import send_json
from swarmgate.routing.fleet import Fleet, Pool
from swarmgate.store import Store
from swarmgate.types import ASGIScope, Receive, Send

log = logging.getLogger("swarmgate.health")
PING_TIMEOUT = 2.0


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _check(up: bool | None, started: float, checked_at: str) -> dict[str, Any]:
    if up is None:
        return {"status": "not_configured"}
    return {
        "status": "up" if up else "down",
        "latency_ms": round((time.perf_counter() - started) * 1000, 1),
        "checked_at": checked_at,
    }


def model_health(pool: Pool) -> dict[str, Any]:
    healthy = sum(1 for m in pool.members if m.healthy)
    if healthy == len(pool.members):
        status = "healthy"
    elif healthy:
        status = "degraded"
    else:
        status = "unhealthy"
    return {"status": status, "deployments": len(pool.members), "healthy": healthy}


class Health:
    def __init__(
        self, name: str, fleet: Fleet, store: Store, interval: float, metrics: Metrics
    ) -> None:
        self.name = name
        self.metrics = metrics
        self.fleet = fleet
        self.store = store
        self.interval = interval
        self.serving = False  # set by the lifespan: false while starting and shutting down
        self.checks: dict[str, dict[str, Any]] = {
            "database": {"status": "unknown"},
            "redis": {"status": "unknown"},
        }
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.check_once()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="health-checks")

    async def stop(self) -> None:
        self.serving = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check_once()
            except Exception:  # a bug in a check must not end the checks
                log.exception("health check failed")

    async def check_once(self) -> None:
        checked_at = _now_iso()
        started = time.perf_counter()
        try:
            async with asyncio.timeout(PING_TIMEOUT):
                db_up = await self.store.db.ping()
        except TimeoutError:
            db_up = False
        database = _check(db_up, started, checked_at)
        started = time.perf_counter()
        redis_up = await self.store.events.ping()
        redis = _check(redis_up, started, checked_at)
        self.checks = {"database": database, "redis": redis}
        # gateway_dependency_up, for the alerts (deploy/prometheus): only what is configured.
        for name, up in (("database", db_up), ("redis", redis_up)):
            if up is not None:
                self.metrics.dependency(name, up)

    def document(self) -> tuple[int, dict[str, Any]]:
        """The /health document and its status code: pure, from the latest snapshots."""
        pools = self.fleet.snapshot.pools
        models = {name: model_health(pool) for name, pool in pools.items()}
        down = [c for c in self.checks.values() if c["status"] == "down"]
        servable = any(m["healthy"] for m in models.values())
        if not self.serving or not servable:
            status = "unhealthy"
        elif down or any(m["status"] != "healthy" for m in models.values()):
            status = "degraded"
        else:
            status = "healthy"
        body = {
            "status": status,
            "gateway": self.name,
            "version": __version__,
            "models": list(pools),
            "timestamp": _now_iso(),
            "checks": {**self.checks, "models": models},
        }
        return (503 if status == "unhealthy" else 200), body

    async def health(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        status, body = self.document()
        await send_json(send, status, body, [(b"cache-control", b"no-store")])

    async def live(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        await send_json(send, 200, {"status": "alive", "version": __version__}, [])

    async def root(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        """Seed 002's root endpoint: what this is and where to go next."""
        body = {
            "name": self.name,
            "service": "swarmgate",
            "version": __version__,
            "description": "OpenAI-compatible inference gateway",
            "links": {
                "docs": "/docs",
                "openapi": "/openapi.json",
                "health": "/health",
                "models": "/v1/models",
                "metrics": "/metrics",
            },
        }
        await send_json(send, 200, body, [])
