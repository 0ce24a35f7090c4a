"""Running a fleet profile: one aiohttp site per simulated server, all in one event loop.

``start_fleet`` / ``Fleet.stop`` for tests and the demo, ``run_fleet`` to serve until
cancelled, ``main_sim`` for the ``swarmgate sim`` command (clean SIGINT/SIGTERM shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from aiohttp import web

from swarmgate.errors import ConfigError
from swarmgate.sim.profile import FleetProfile, ServerProfile, load_fleet_profile
from swarmgate.sim.server import SimServer

# In-flight requests get this long to finish on stop; hung ones are then cancelled.
SHUTDOWN_TIMEOUT = 2.0
# A thousand clients may connect in the same instant (benchmarks, thundering herds).
BACKLOG = 4096


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class Fleet:
    """Started simulated servers. ``urls`` maps each server's name to its base URL."""

    def __init__(self) -> None:
        self.urls: dict[str, str] = {}
        self.servers: dict[str, SimServer] = {}
        self._runners: list[web.AppRunner] = []

    async def _start(self, index: int, profile: ServerProfile, *, seed: int, testing: bool) -> None:
        server = SimServer(profile, seed=seed, testing=testing)
        runner = web.AppRunner(
            server.app(),
            handler_cancellation=True,  # a client that goes away ends its (hung) handler
            access_log=None,
            shutdown_timeout=SHUTDOWN_TIMEOUT,
        )
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, profile.host, profile.port, backlog=BACKLOG)
        try:
            await site.start()
        except OSError as exc:
            where = f"{profile.host}:{profile.port}"
            problem = f"servers[{index}] ({profile.name}): cannot listen on {where}: {exc}"
            raise ConfigError([problem]) from exc
        port = runner.addresses[0][1]
        self.urls[profile.name] = _url(profile.host, port)
        self.servers[profile.name] = server

    async def stop(self) -> None:
        runners, self._runners = self._runners, []
        for runner in reversed(runners):
            await runner.cleanup()

    async def __aenter__(self) -> Fleet:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


async def start_fleet(profile: FleetProfile, *, testing: bool = False) -> Fleet:
    """Start every server of ``profile``. With ``testing``, honour ``X-Sim-Fail``."""
    fleet = Fleet()
    try:
        for index, server in enumerate(profile.servers):
            await fleet._start(index, server, seed=profile.seed, testing=testing)
    except BaseException:
        await fleet.stop()
        raise
    return fleet


async def run_fleet(
    profile: FleetProfile,
    *,
    testing: bool = False,
    ready: Callable[[Fleet], None] | None = None,
) -> None:
    """Start, call ready(fleet), serve until cancelled (SIGINT/SIGTERM handled by caller), stop."""
    fleet = await start_fleet(profile, testing=testing)
    try:
        if ready is not None:
            ready(fleet)
        await asyncio.Event().wait()
    finally:
        await fleet.stop()


def _announce(profile: FleetProfile, testing: bool) -> Callable[[Fleet], None]:
    def ready(fleet: Fleet) -> None:
        for server in profile.servers:
            models = ", ".join(server.models)
            print(f"sim {server.name}: {fleet.urls[server.name]}  [{models}]", flush=True)
        if testing:
            print("testing mode: the X-Sim-Fail request header is honoured", flush=True)

    return ready


async def _serve_until_signalled(profile: FleetProfile, testing: bool) -> None:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        with contextlib.suppress(NotImplementedError):  # not on Windows' event loop
            loop.add_signal_handler(sig, task.cancel)
    try:
        await run_fleet(profile, testing=testing, ready=_announce(profile, testing))
    except asyncio.CancelledError:
        print("sim: stopped", file=sys.stderr, flush=True)
    finally:
        for sig in signals:
            with contextlib.suppress(NotImplementedError):
                loop.remove_signal_handler(sig)


def main_sim(path: str | Path, testing: bool) -> None:
    """``swarmgate sim --config FILE [--testing]``: serve until SIGINT or SIGTERM.

    Raises ``ConfigError`` for an invalid profile or a port that cannot be bound.
    """
    profile = load_fleet_profile(path)
    asyncio.run(_serve_until_signalled(profile, testing))
