"""``create_app(settings)``: the object graph, built once, and the ASGI entry point.

Requests for the inference and operations paths are dispatched by one dict lookup to plain
ASGI handlers; everything else (docs, OpenAPI, admin) goes to the management app.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from swarmgate import store
from swarmgate.api.admin import build_admin_router
from swarmgate.api.cluster import NATIVE_PREFIXES, Cluster, build_cluster_router
from swarmgate.api.health import Health
from swarmgate.api.hosts import TrustedHosts
from swarmgate.api.management import build_management_app
from swarmgate.api.native import NativeInference
from swarmgate.api.native_downloads import PATH as DOWNLOADS
from swarmgate.api.native_downloads import NativeDownloads
from swarmgate.api.native_models import NativeModels
from swarmgate.api.ops import Ops
from swarmgate.api.reload import Applied, Reloader, applicable, restart_needed
from swarmgate.api.responses import PATH as RESPONSES
from swarmgate.api.responses import Responses
from swarmgate.api.usage import build_usage_router
from swarmgate.api.v1 import Inference
from swarmgate.auth.ip import Networks
from swarmgate.auth.security import Security
from swarmgate.config import (
    Settings,
    config_path_from_env,
    environment,
    load_settings,
    metrics_dir_from_env,
)
from swarmgate.errors import ConfigError, GatewayError, MethodNotAllowed, NotFound, StoreError
from swarmgate.jobs.downloads import Downloads
from swarmgate.limits.admission import Admission
from swarmgate.limits.capacity import CapacityLine
from swarmgate.limits.ledger import Ledger
from swarmgate.observability.access import AccessLog
from swarmgate.observability.logs import configure_logging
from swarmgate.observability.metrics import Metrics
from swarmgate.pipeline import access
from swarmgate.pipeline.accounting import Accounting
from swarmgate.pipeline.asgi import read_head, send_error
from swarmgate.pipeline.call import Caller
from swarmgate.pipeline.fallback import FallbackCaller
from swarmgate.pipeline.native_errors import send_native_error
from swarmgate.pipeline.native_request import PARSERS
from swarmgate.pipeline.queueing import Queueing
from swarmgate.pipeline.request import ROUTES
from swarmgate.pipeline.results import Results
from swarmgate.routing import scrape
from swarmgate.routing.discovery import Discovery
from swarmgate.routing.dns import Resolver
from swarmgate.routing.fleet import Fleet
from swarmgate.routing.hints import PlacementHints
from swarmgate.routing.plan import Router
from swarmgate.routing.registry import Registry
from swarmgate.routing.selection import ModelSelector
from swarmgate.routing.watch import FleetWatch, health_rows
from swarmgate.store import names
from swarmgate.store.counters import MemoryCounters
from swarmgate.store.redis_counters import RedisCounters
from swarmgate.store.retention import Retention
from swarmgate.types import (
    ASGIApp,
    ASGIScope,
    CounterStore,
    Message,
    Origin,
    Receive,
    Send,
    Transport,
)
from swarmgate.upstream.exposition import HttpExpositions
from swarmgate.upstream.transport import HttpTransport

if TYPE_CHECKING:
    from swarmgate.observability.tracing import Tracing

log = logging.getLogger("swarmgate")

Handler = Callable[[ASGIScope, Receive, Send], Awaitable[None]]
# The method label's values (anything else is "other": labels stay bounded).
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
YOUNG_GC_THRESHOLD = 50_000  # allocations between two collections of the young generation


def counters_of(settings: Settings, metrics: Metrics) -> CounterStore:
    """Redis when there is one and anything is limited (exact across replicas), else this
    process's memory."""
    limits = settings.limits
    if settings.redis.url and limits.any_limit:
        return RedisCounters(
            settings.redis.url,
            metrics,
            timeout=limits.redis_timeout,
            fail_open=limits.redis_failure == "fail_open",
            replicas=limits.replicas,
        )
    return MemoryCounters()


class Gateway:
    def __init__(
        self,
        settings: Settings,
        transport: Transport | None = None,
        *,
        config_path: str | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = Metrics(metrics_dir_from_env(), settings.monitoring.active_users_window)
        self.fleet = Fleet(settings)
        self.scraper = scrape.Scraper(self.fleet, HttpExpositions(), settings.scrape)
        self.transport = transport or HttpTransport()
        # Probes and the outlier sweep, in the background; the request path only reads them.
        self.watch = FleetWatch(self.fleet, self.transport)
        self.metrics.follow_fleet(health_rows(self.fleet))
        self.store = store.open(settings)
        self.hints: PlacementHints | None = None
        if settings.redis.url and settings.redis.share_placements:
            self.hints = PlacementHints(
                self.fleet, self.store.events, publish_timeout=settings.redis.publish_timeout
            )
        self.security = Security(settings, self.metrics, self.store)
        # Workers added, drained or removed at run time, applied over the file's fleet.
        self.registry = Registry(
            settings, self.fleet, self.store.deployments, self.store.events, environment({})
        )
        # Deployments named by DNS (``discover``), re-resolved in the background.
        self.discovery = Discovery(settings, self.registry.discovered, resolver, self.metrics)
        self.cluster = Cluster(settings.server.name, self.registry)
        self.authenticator = self.security.authenticator
        self.ledger: Ledger | None = None
        if settings.ledger.enabled:
            config = settings.ledger
            if config.spool_path is None:  # settings not read from a file: beside the audit's
                spool = settings.audit.spool_path + ".ledger"
                config = config.model_copy(update={"spool_path": spool})
            self.ledger = Ledger(self.store.usage, config)
            self.metrics.follow_ledger(self.ledger.counts)
        self.retention = Retention(
            self.store.usage,
            self.store.audit,
            settings.ledger,
            settings.audit,
            responses=self.store.responses,
            responses_config=settings.responses,
        )
        self._retention_task: asyncio.Task[None] | None = None
        self.counters = counters_of(settings, self.metrics)
        line = None
        if isinstance(self.counters, RedisCounters) and settings.limits.fleet_capacity:
            line = CapacityLine(self.counters, self.metrics)
            self.store.events.subscribe(names.CAPACITY_FREED, line.freed)
        self.admission = Admission(
            settings.limits,
            self.counters,
            self.metrics,
            Networks(settings.auth.ip.trusted_proxies),
            line,
        )
        self.selector = selector = ModelSelector.of(settings)
        self.router = router = Router()
        self.caller = Caller(self.transport, Queueing(settings.limits, self.metrics))
        # Both read at start only: a reload does not change them (docs/observability.md).
        self.tracing = tracing_of(settings)
        self.access = access_log_of(settings)
        calls = self._calls(selector)
        self.inference = Inference(
            self.authenticator,
            self.fleet,
            self.admission,
            router,
            calls,
            Accounting(self.metrics, self.ledger, tracing=self.tracing, access=self.access),
            settings.server.max_body_bytes,
            # uvicorn's protocol bounds a stalled body (connections.py); granian does not.
            settings.server.body_timeout if settings.server.server == "granian" else None,
            settings.server.max_upload_bytes,
            self.selector,
        )
        native = settings.native
        self.results = Results(
            native.results_ttl, native.results_max_entries, native.results_max_bytes
        )
        self.native = NativeInference(self.inference, self.results)
        # Counted by ``Accounting.finish``, as /v1's inference routes are.
        self.native_inference: dict[str, Handler] = {path: self.native for path in PARSERS}
        self.responses = Responses(self.inference, self.store.responses)
        self.native_inference[RESPONSES] = self.responses.create
        self.ops = Ops(self.fleet, self.metrics, self.authenticator)
        self.routes: dict[str, tuple[str, Handler]] = {
            path: ("POST", self.inference) for path in ROUTES
        }
        self.routes |= self._path_routes(self.selector)
        self.health = Health(
            settings.server.name,
            self.fleet,
            self.store,
            settings.monitoring.health_interval,
            self.metrics,
        )
        self.routes |= {
            "/": ("GET", self.health.root),
            "/health": ("GET", self.health.health),
            "/gateway/health": ("GET", self.health.health),  # seed 003's name for it
            "/health/live": ("GET", self.health.live),
            "/health/ready": ("GET", self.ops.readiness),
            "/models/status": ("GET", self.cluster.models_status),
            "/metrics": ("GET", self.ops.prometheus),
            "/v1/models": ("GET", self.ops.models),
        }
        self.routes |= {path: ("POST", self.native) for path in PARSERS}
        self.routes[RESPONSES] = ("POST", self.responses.create)
        self.native_models = NativeModels(self.fleet, self.authenticator)
        self.routes["/api/v1/models"] = ("GET", self.native_models)
        self.downloads = Downloads(
            self.store.downloads,
            self.transport,
            Origin(native.ollama_url) if native.ollama_url else None,
            concurrency=native.download_concurrency,
            queue_size=native.download_queue,
            idle_timeout=native.download_idle_timeout,
        )
        self.native_downloads = NativeDownloads(
            self.downloads,
            self.store.downloads,
            self.authenticator,
            settings.server.max_body_bytes,
            time.time,
        )
        self.routes[DOWNLOADS] = ("POST", self.native_downloads.create)
        # Paths with an id at the end: (prefix, method, handler, the metrics endpoint label),
        # the longest prefix first.
        self.prefixes: tuple[tuple[str, str, Handler, str], ...] = (
            ("/v1/models/", "GET", self.ops.models, "/v1/models/{model}"),
            (RESPONSES + "/", "GET,DELETE", self.responses.stored, RESPONSES + "/{id}"),
            ("/api/v1/inference/", "GET", self.native.task, "/api/v1/inference/{task_id}"),
            # Ahead of /api/v1/models/{model_id}, which would take "download" for a model.
            (
                DOWNLOADS + "/",
                "GET",
                self.native_downloads.status,
                "/api/v1/models/download/{id}",
            ),
            ("/api/v1/models/", "GET", self.native_models, "/api/v1/models/{model_id}"),
        )
        self.reloader = Reloader(
            config_path, settings, self.reload, self.store.events, self._audit_reload, self.metrics
        )
        self.management = build_management_app(
            [
                build_admin_router(self.security, self.reloader),
                build_usage_router(self.security),
                build_cluster_router(self.security, self.cluster),
            ]
        )

    def _calls(self, selector: ModelSelector | None) -> Caller | FallbackCaller:
        """The call stage; wrapped by the fallback chains only when some model has one."""
        if selector is not None and selector.fallbacks:
            return FallbackCaller(self.caller, selector, self.fleet, self.router)
        return self.caller

    def _path_routes(self, selector: ModelSelector | None) -> dict[str, tuple[str, Handler]]:
        """A path route's prefix before each inference path (routing.routes[].path_prefix)."""
        routes: dict[str, tuple[str, Handler]] = {}
        for route in selector.path_routes if selector else ():
            routes |= {f"{route.path_prefix}{p}": ("POST", self.inference) for p in ROUTES}
        return routes

    async def reload(self, new: Settings) -> Applied:
        """Apply what ``new`` changes that can change at run time (``api/reload.py``); what
        was added and removed, and the settings that need a restart for their change (not
        applied).

        Requests and streams in flight keep the pool, plan, lease and selector they started
        with; a deployment that stays keeps its state (in-flight count, circuit, health),
        and one that goes away finishes what it holds (``Fleet.replace``). Nothing here
        awaits between the fleet's swap and the selector's, so no request sees one new and
        the other old, except for the DNS lookups of new ``discover`` entries, made first."""
        pending = restart_needed(self.settings, new)
        settings = applicable(self.settings, new)
        before = self._fleet_names()
        await self.discovery.reconfigure(settings, notify=False)
        # Through the registry: workers added, drained or removed at run time stay so.
        self.registry.rebase(settings, self.discovery.answers)
        selector = ModelSelector.of(settings)
        old_paths = self._path_routes(self.selector)
        for path in old_paths:
            self.routes.pop(path, None)
        self.selector = self.inference.selector = selector
        self.inference.caller = self._calls(selector)
        self.routes |= self._path_routes(selector)
        self.admission.configure(settings.limits)
        self.caller.queueing = Queueing(settings.limits, self.metrics)
        self.security.admin.configure_tiers(settings.limits.all_tiers())
        if self.hints is not None:
            self.hints.attach()  # a balancer made prefix-aware by the reload publishes too
        self.settings = settings
        return Applied.between(before, self._fleet_names(), pending)

    def _fleet_names(self) -> dict[str, list[str]]:
        return {m: [s.name for s in p.members] for m, p in self.fleet.snapshot.pools.items()}

    def _audit_reload(self, action: str, actor: str, outcome: str, details: dict[str, Any]) -> None:
        self.security.audit.record(
            action, actor=actor, target=self.reloader.path, outcome=outcome, details=details
        )

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            route = self.routes.get(scope["path"])
            if route is not None and route[1] is self.inference and scope["method"] == "POST":
                await self.inference(scope, receive, send)  # the hot path: counted in finish
                return
            if scope["method"] == "POST":
                native = self.native_inference.get(scope["path"])
                if native is not None:
                    await native(scope, receive, send)  # counted in finish too
                    return
            await self._counted(route, scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        else:
            await self.management(scope, receive, send)

    async def _counted(
        self, route: tuple[str, Handler] | None, scope: ASGIScope, receive: Receive, send: Send
    ) -> None:
        """Every other HTTP request: dispatched, and counted with the status it was answered."""
        path: str = scope["path"]
        endpoint: str | None = path
        if route is None:
            for prefix, method, handler, label in self.prefixes:
                if path.startswith(prefix):
                    route, endpoint = (method, handler), label
                    break
        started = time.perf_counter()
        status = 500

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        # Seed 001's error format on the native face, OpenAI's everywhere else.
        write_error = send_native_error if path.startswith("/api/") else send_error
        try:
            if (
                route is None
                and write_error is send_native_error
                and not path.startswith(NATIVE_PREFIXES)  # the management app's
            ):
                endpoint = "unmatched"
                error: GatewayError = NotFound(f"no route {scope['method']} {path}")
                await write_error(counting_send, error, read_head(scope).request_id)
                return
            if route is None:
                endpoint = None  # the management app's route, known once it has matched
                await self.management(scope, receive, counting_send)
                return
            method, handler = route
            allowed = method.split(",")  # one method, or a few: "GET,DELETE"
            if scope["method"] not in allowed and not (
                "GET" in allowed and scope["method"] == "HEAD"
            ):
                error = MethodNotAllowed(
                    f"{scope['method']} is not allowed on {path}; use {method}"
                )
                error.headers["allow"] = method
                await write_error(counting_send, error, read_head(scope).request_id)
                return
            await handler(scope, receive, counting_send)
        finally:
            if endpoint is None:
                endpoint = getattr(scope.get("route"), "path", None) or "unmatched"
            method_label = scope["method"] if scope["method"] in HTTP_METHODS else "other"
            self.metrics.request(method_label, endpoint, status, time.perf_counter() - started)

    async def startup(self) -> None:
        await self.counters.start()
        await self.security.start()  # migrates the store first, if configured
        await self.registry.start()  # the workers added at run time, from the store
        await self.discovery.start()  # the first answers, before the first request
        if self.ledger is not None:
            await self.ledger.start()
            await self._restore_budgets()
        self._retention_task = asyncio.create_task(self.retention.run(), name="retention")
        self.metrics.start()
        if self.access is not None:
            self.access.start()
        await self.health.start()
        self.watch.start()
        self.downloads.start()
        self.scraper.start()
        if self.hints is not None:
            self.hints.attach()
            self.hints.start()
        self.reloader.start()
        # Everything alive now (modules, settings, pools) lives until shutdown: move it out of
        # the collector's reach, so that full collections under load stay short. And collect
        # the young generation less often: a request allocates a few hundred objects that
        # reference counting frees, and at the default threshold (700) a collection ran every
        # other request (measured: +13% throughput at 50 concurrent, bench/README.md).
        gc.collect()
        gc.freeze()
        _, older, oldest = gc.get_threshold()
        gc.set_threshold(YOUNG_GC_THRESHOLD, older, oldest)
        self.ops.ready = self.health.serving = self.cluster.ready = True

    async def _restore_budgets(self) -> None:
        """Budgets survive a restart: their counters start from the ledger's spend."""
        try:
            restored = await self.admission.restore_budgets(self.store.usage)
        except StoreError as exc:
            log.warning("budgets start from zero: the ledger cannot be read (%s)", exc)
            return
        if restored:
            log.info("budgets: %d spend counters restored from the ledger", restored)

    async def shutdown(self) -> None:
        self.ops.ready = self.cluster.ready = False
        await self.health.stop()
        await self.reloader.stop()
        await self.watch.stop()
        await self.discovery.stop()
        await self.registry.stop()
        if self._retention_task is not None:
            self._retention_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retention_task
        # The server has finished (or cut off) every request by now, so every record is
        # queued: stored, or spooled if the store is down, before the store closes.
        if self.ledger is not None:
            await self.ledger.stop()
        # Before the transport and the store: interrupted jobs are marked failed in the store.
        await self.downloads.stop()
        await self.scraper.stop()
        if self.hints is not None:
            await self.hints.stop()
        await self.transport.close()
        # Every request has finished: its access line and spans are queued; written now.
        if self.access is not None:
            await asyncio.to_thread(self.access.stop)
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.close)
        await self.counters.close()
        await self.metrics.stop()
        await self.security.close()
        await self.store.close()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await self.shutdown()
                except Exception as exc:
                    await send({"type": "lifespan.shutdown.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.shutdown.complete"})
                return


def tracing_of(settings: Settings) -> Tracing | None:
    """The tracer when ``tracing.enabled``; its SDK is imported only then."""
    if not settings.tracing.enabled:
        return None
    try:
        from swarmgate.observability.tracing import Tracing
    except ImportError as exc:
        raise ConfigError(
            [
                "tracing.enabled needs OpenTelemetry's SDK and OTLP exporters:"
                " pip install 'swarmgate[tracing]'"
            ]
        ) from exc
    return Tracing(settings.tracing, settings.server.name)


def access_log_of(settings: Settings) -> AccessLog[access.Entry] | None:
    config = settings.logging.access
    if not config.enabled:
        return None
    return AccessLog(
        access.render,
        format=config.format,
        sample=config.sample,
        path=config.path,
        flush_interval=config.flush_interval,
        max_queue=config.max_queue,
    )


def create_app(settings: Settings, config_path: str | None = None) -> ASGIApp:
    """The gateway; ``config_path``, the file ``settings`` were read from, is what a reload
    reads again."""
    app: Any = Gateway(settings, config_path=config_path)
    server = settings.server
    if server.trusted_hosts:
        app = TrustedHosts(app, server.trusted_hosts)
    if server.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app = CORSMiddleware(
            app,
            allow_origins=list(server.cors_origins),
            allow_methods=["GET", "POST", "DELETE", "PATCH", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=["x-request-id", "x-swarmgate-deployment", "retry-after"],
        )
    return app  # type: ignore[no-any-return]


def app_from_env() -> ASGIApp:
    """Factory for servers started by import string (workers): reads SWARMGATE_CONFIG."""
    configure_logging()
    path = config_path_from_env()
    settings = load_settings(path)
    configure_logging(settings.logging)
    return create_app(settings, path)
