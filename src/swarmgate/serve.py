"""Running the gateway under an ASGI server (uvicorn or granian), and the demo fleet.

Workers load their settings from ``SWARMGATE_CONFIG`` through ``app_from_env``, so the parent
validates the file once (to fail fast with readable errors) and the workers re-read it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import resource
import shutil
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from swarmgate.config import ENV_PREFIX, Settings, worker_problem
from swarmgate.errors import ConfigError


async def prepare_store(settings: Settings) -> None:
    """Migrate and bootstrap the admin key once, before workers start (they would race)."""
    from swarmgate import store as stores
    from swarmgate.auth.keys import KeyService
    from swarmgate.auth.security import prepare_store, server_hasher

    store = stores.open(settings)
    try:
        await prepare_store(settings, store, KeyService(store.keys, server_hasher(settings)))
    finally:
        await store.close()


def serve(
    config_path: str | None,
    settings: Settings,
    host: str,
    port: int,
    workers: int,
    server: str,
    *,
    profile: str | None = None,
) -> None:
    problem = worker_problem(settings, workers)
    if problem is not None:
        raise ConfigError([problem])
    if config_path is not None:
        os.environ[ENV_PREFIX + "CONFIG"] = str(Path(config_path).resolve())
    if profile:
        os.environ[ENV_PREFIX + "PROFILE"] = profile  # the workers re-read the file with it
    # Workers re-read the settings: they must know which server runs them (see read_body).
    os.environ[ENV_PREFIX + "SERVER__SERVER"] = server
    _raise_open_files_limit(settings.server.max_connections)
    asyncio.run(prepare_store(settings))
    metrics_dir = None
    if workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # Workers share their metrics through files; must be set before they import anything.
        metrics_dir = tempfile.mkdtemp(prefix="swarmgate-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        _run_server(settings, host, port, workers, server)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _raise_open_files_limit(connections: int) -> None:
    """Each client connection costs a descriptor, and one more to its deployment: ask for
    enough (up to the hard limit), so that the connection cap, not the kernel, refuses."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2 * connections + 1024
    if soft != resource.RLIM_INFINITY and soft < wanted:
        ceiling = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))


def _run_server(settings: Settings, host: str, port: int, workers: int, server: str) -> None:
    target = "swarmgate.api.app:app_from_env"
    limits = settings.server
    tls = limits.tls
    if server == "granian":
        from granian import Granian
        from granian.http import HTTP1Settings

        from swarmgate import tls as https

        if tls is not None and tls.ciphers:  # --server granian over a uvicorn config
            raise ConfigError(["server.tls.ciphers: granian takes no cipher list (see docs)"])
        watcher = None
        if tls is not None and tls.watch:
            from swarmgate.observability.logs import configure_logging

            configure_logging()  # this process logs the rotations; its workers their own
            watcher = https.watch_for_granian(tls)
        granian = Granian(
            target,
            address=host,
            port=port,
            interface="asgi",  # type: ignore[arg-type]
            workers=workers,
            factory=True,
            log_access=settings.server.access_log,
            backlog=2048,
            # hyper's head bound also ends a kept-alive connection waiting for its next
            # request; bodies are bounded by the app (read_body). Past the cap, granian holds
            # new requests back instead of refusing them.
            http1_settings=HTTP1Settings(
                header_read_timeout=int(min(limits.header_timeout, limits.keepalive_timeout) * 1000)
            ),
            backpressure=limits.max_connections,
            # HTTP/1.1 and HTTP/2 (h2 by ALPN over TLS, prior knowledge in clear text).
            **(https.granian_options(tls) if tls is not None else {}),
        )
        try:
            granian.serve()
        finally:
            if watcher is not None:
                watcher.stop()
        return
    import uvicorn

    tls_options: dict[str, Any] = {}
    if tls is not None:
        from swarmgate import tls as https

        tls_options["ssl_context_factory"] = functools.partial(https.uvicorn_context, tls)

    uvicorn.run(
        target,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        http="swarmgate.connections:GuardedHttpToolsProtocol",
        timeout_keep_alive=int(max(1, limits.keepalive_timeout)),
        lifespan="on",
        access_log=settings.server.access_log,
        # X-Forwarded-For is honoured by the authenticator, only from auth.ip.trusted_proxies.
        proxy_headers=False,
        timeout_graceful_shutdown=int(settings.server.shutdown_grace),
        backlog=2048,
        log_level="info",
        **tls_options,
    )


async def serve_in_loop(
    settings: Settings, host: str, port: int, on_ready: Callable[[], None] | None = None
) -> None:
    """Serve in the current event loop (the demo runs the fleet beside it) until SIGINT/SIGTERM."""
    import uvicorn

    from swarmgate.api.app import create_app
    from swarmgate.connections import GuardedHttpToolsProtocol
    from swarmgate.observability.logs import configure_logging

    configure_logging(settings.logging)
    config = uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        loop="none",
        http=GuardedHttpToolsProtocol.with_limits(settings.server),
        timeout_keep_alive=int(max(1, settings.server.keepalive_timeout)),
        lifespan="on",
        access_log=False,
        proxy_headers=False,
        log_level="warning",
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                await task
                raise SystemExit(f"the gateway could not start on {host}:{port}")
            await asyncio.sleep(0.05)
        if on_ready is not None:
            on_ready()
        await asyncio.wait(
            [task, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
