"""The fleet's run-time changes: workers added, drained, restarted and removed while it runs.

A worker is a deployment; its id is the deployment's name (``model@host:port`` by default).
The config file's fleet stays the base: ``effective(settings, changes)`` is that fleet with the
stored changes applied (``store/deployments.py``), a pure function, and ``Registry`` swaps it
into the ``Fleet`` after every change. So a deployment added at run time survives a restart
(it is read back from the store at startup) and a config reload (``rebase``), and with a shared
store it reaches every replica: a change is published on the event bus (a hint, so that the
others re-read the store at once) and every replica re-reads the store every
``monitoring.fleet_sync_interval`` seconds anyway.

Draining is ``DeploymentState.draining``: the plan skips the deployment (``has_capacity``),
the requests and streams it holds finish. Waiting for them is per replica: each gateway knows
only its own in-flight requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from swarmgate.config import Deployment as DeploymentConfig
from swarmgate.config import Settings, validation_problems
from swarmgate.errors import BadRequest, Conflict, NotFound, StoreError
from swarmgate.routing.discovery import Found, Target, expand, found_names
from swarmgate.routing.fleet import DeploymentState, Fleet, _deployment_name, deployments_of
from swarmgate.store import names
from swarmgate.store.deployments import ACTIVE, DRAINING, REMOVED, DeploymentStore, FleetChange
from swarmgate.store.events import EventBus

log = logging.getLogger("swarmgate.fleet")

IDLE_POLL = 0.05  # seconds between two looks at a draining deployment's in-flight count


def _config_of(change: FleetChange, environ: Mapping[str, str]) -> DeploymentConfig | None:
    """A stored deployment's config, its key read from its ``api_key_env``; None (logged)
    when the stored spec no longer validates or its variable is not set here."""
    spec = dict(change.spec or {})
    env = spec.get("api_key_env")
    if isinstance(env, str):
        if env not in environ:
            log.warning("worker %s left out: $%s is not set", change.name, env)
            return None
        spec["api_key"] = environ[env]
    try:
        return DeploymentConfig.model_validate({**spec, "name": change.name})
    except ValidationError as exc:
        problems = "; ".join(validation_problems(exc, DeploymentConfig))
        log.warning("worker %s left out: its stored config is invalid (%s)", change.name, problems)
        return None


def effective(
    settings: Settings, changes: Iterable[FleetChange], environ: Mapping[str, str]
) -> Settings:
    """The config file's fleet with the run-time changes applied: the file's deployments,
    less those removed, plus those added (to models the file configures). Names are pinned,
    so that removing one deployment never renames another."""
    changes = list(changes)
    removed = {c.name for c in changes if c.state == REMOVED}
    added: defaultdict[str, list[DeploymentConfig]] = defaultdict(list)
    for change in changes:
        if change.spec is None or change.state == REMOVED:
            continue
        if change.model not in settings.models:
            log.warning("worker %s left out: model %r is not configured", change.name, change.model)
            continue
        config = _config_of(change, environ)
        if config is not None:
            added[change.model].append(config)
    named = deployments_of(settings)
    models = {}
    for model_id, model in settings.models.items():
        kept = tuple(
            config.model_copy(update={"name": dep.name})
            for config, dep in zip(
                (d for d in model.deployments if d.url is not None), named[model_id], strict=True
            )
            if dep.name not in removed
        )
        deployments = kept + tuple(added[model_id])
        if not deployments:  # a pool needs a member; the API refuses to remove the last one
            deployments = model.deployments
        models[model_id] = model.model_copy(update={"deployments": deployments})
    return settings.model_copy(update={"models": models})


def parse_worker(
    settings: Settings, body: Any, environ: Mapping[str, str]
) -> tuple[str, dict[str, Any], DeploymentConfig]:
    """A ``POST /api/v1/workers`` body: ``model`` plus a deployment as the config file has
    it. Problems are reported as ``check-config`` would, at the place the deployment would
    take in the file (``models.m.deployments[2].url: ...``). Returns the model, the spec to
    store and the validated config."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object: a model and a deployment")
    spec = dict(body)
    model = spec.pop("model", None)
    if not isinstance(model, str) or not model:
        raise BadRequest("model: required (the configured model the worker serves)", param="model")
    if model not in settings.models:
        known = ", ".join(sorted(settings.models))
        raise BadRequest(f"model: {model!r} is not a configured model ({known})", param="model")
    # The file's deployments' names for the model, so the place matches check-config's.
    where = f"models.{model}.deployments[{len(settings.models[model].deployments)}]"
    if "upstream_model" in spec:  # the API's name for the file's "model" of a deployment
        spec["model"] = spec.pop("upstream_model")
    problems = []
    if "api_key" in spec:
        problems.append(
            f"{where}.api_key: never put a key in the file; "
            "name its environment variable in api_key_env"
        )
        spec.pop("api_key")
    env = spec.get("api_key_env")
    resolved = dict(spec)
    if isinstance(env, str):
        if env not in environ:
            problems.append(f"{where}.api_key_env: ${env} is not set")
        else:
            resolved["api_key"] = environ[env]
    try:
        config = DeploymentConfig.model_validate(resolved)
    except ValidationError as exc:
        problems.extend(f"{where}.{p}" for p in validation_problems(exc, DeploymentConfig))
    if "discover" in spec:
        problems.append(f"{where}.discover: only in the config file; a worker has a url")
    if problems:
        raise BadRequest("; ".join(problems))
    return model, spec, config


class Registry:
    def __init__(
        self,
        settings: Settings,
        fleet: Fleet,
        store: DeploymentStore,
        events: EventBus,
        environ: Mapping[str, str],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.fleet = fleet
        self.store = store
        self.events = events
        self.environ = environ
        self.interval = settings.monitoring.fleet_sync_interval
        self.clock = clock
        self.changes: dict[str, FleetChange] = {}
        # What DNS discovery found for the file's ``discover`` entries (routing/discovery.py).
        self.answers: dict[Target, tuple[Found, ...]] = {}
        self._discovered: set[str] = set()  # the names of the deployments found
        self._reads = 0  # reads of the store started; only the newest one read is applied
        self._applied = 0
        self._task: asyncio.Task[None] | None = None
        self._heard_tasks: set[asyncio.Task[None]] = set()
        events.subscribe(names.FLEET_EVENTS, self._heard)

    async def start(self) -> None:
        """Read the stored changes (a store that is down leaves the config's fleet, logged),
        then keep reading them in the background."""
        try:
            await self.reload()
        except StoreError as exc:
            log.warning("fleet: the config file's deployments only, for now (%s)", exc)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="fleet-sync")

    async def stop(self) -> None:
        for task in (self._task, *self._heard_tasks):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._task = None

    async def _run(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.reload()
                failing = False
            except StoreError as exc:
                if not failing:  # one warning per outage
                    log.warning("fleet: cannot read the run-time changes (%s)", exc)
                failing = True
            except Exception:  # a bug must not end the loop
                log.exception("fleet: reload failed")

    def _heard(self, message: str) -> None:
        """Another replica (or the CLI) changed the fleet: read the store now."""
        task = asyncio.get_running_loop().create_task(self._reload_quietly(), name="fleet-event")
        self._heard_tasks.add(task)
        task.add_done_callback(self._heard_tasks.discard)

    async def _reload_quietly(self) -> None:
        try:
            await self.reload()
        except StoreError as exc:
            log.warning("fleet: cannot read the run-time changes after an event (%s)", exc)

    async def reload(self) -> None:
        self._reads += 1
        read = self._reads
        rows = await self.store.all()
        if read < self._applied:  # a read started later has been applied already
            return
        self._applied = read
        changes = {row.name: row for row in rows}
        if changes == self.changes:
            return  # nothing new: the pools, and what their balancers keep, stay as they are
        self.changes = changes
        self._apply()

    def rebase(
        self, settings: Settings, answers: dict[Target, tuple[Found, ...]] | None = None
    ) -> None:
        """A reloaded config file: the new base (with discovery's answers for it), with the
        run-time changes still applied."""
        self.settings = settings
        if answers is not None:
            self.answers = answers
        self._apply()

    def discovered(self, answers: dict[Target, tuple[Found, ...]]) -> None:
        """DNS discovery's new answers: the fleet with the servers found now."""
        self.answers = answers
        self._apply()

    def _apply(self) -> None:
        base = expand(self.settings, self.answers)
        self._discovered = found_names(self.settings, self.answers)
        self.fleet.replace(effective(base, self.changes.values(), self.environ))
        draining = {c.name for c in self.changes.values() if c.state == DRAINING}
        for state in self.fleet.snapshot.states():
            state.draining = state.name in draining

    def find(self, name: str) -> DeploymentState:
        for state in self.fleet.snapshot.states():
            if state.name == name:
                return state
        raise NotFound(
            f"no worker {name!r}; GET /api/v1/workers lists them", code="worker_not_found"
        )

    def source(self, name: str) -> str:
        """``config`` for a deployment of the config file, ``dns`` for one its ``discover``
        entries found, ``api`` for one added at run time."""
        change = self.changes.get(name)
        if change is not None and change.spec is not None:
            return "api"
        if name in self._discovered:
            return "dns"
        return "config"

    async def _put(
        self, name: str, model: str, spec: dict[str, Any] | None, state: str, by: str | None
    ) -> None:
        now = self.clock()
        old = self.changes.get(name)
        change = FleetChange(name, model, spec, state, old.created_at if old else now, now, by)
        await self.store.put(change)
        await self._changed(name)

    async def _changed(self, name: str) -> None:
        await self.reload()
        await self.events.publish(names.FLEET_EVENTS, name)

    async def add(self, body: Any, by: str | None) -> DeploymentState:
        model, spec, config = parse_worker(self.settings, body, self.environ)
        name = config.name or _deployment_name(model, config)
        if any(s.name == name for s in self.fleet.snapshot.states()):
            raise Conflict(
                f"a worker named {name!r} exists already; give this one a name", param="name"
            )
        await self._put(name, model, spec, ACTIVE, by)
        return self.find(name)

    async def drain(self, name: str, by: str | None) -> DeploymentState:
        state = self.find(name)
        change = self.changes.get(name)
        await self._put(name, state.deployment.model, change.spec if change else None, DRAINING, by)
        return self.find(name)

    async def readmit(self, name: str, by: str | None) -> DeploymentState:
        self.find(name)
        change = self.changes.get(name)
        if change is not None and change.spec is not None:
            await self._put(name, change.model, change.spec, ACTIVE, by)
        elif change is not None:  # a deployment of the file: no change left to keep
            await self.store.delete(name)
            await self._changed(name)
        return self.find(name)

    async def idle(self, state: DeploymentState, timeout: float) -> int:
        """Wait until this replica has no request in flight on ``state``, at most ``timeout``
        seconds; the requests still in flight then."""
        deadline = time.monotonic() + timeout
        while state.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(IDLE_POLL)
        return state.in_flight

    async def restart(
        self, name: str, by: str | None, timeout: float
    ) -> tuple[DeploymentState, int]:
        """Drain, wait for the requests in flight here (bounded), readmit."""
        state = await self.drain(name, by)
        left = await self.idle(state, timeout)
        return await self.readmit(name, by), left

    async def remove(
        self, name: str, by: str | None, timeout: float
    ) -> tuple[DeploymentState, int]:
        """Drain, wait for the requests in flight here (bounded), then take it out of the
        fleet. Requests still in flight after ``timeout`` finish on their own: their lease
        holds the deployment, not the fleet."""
        state = self.find(name)
        pool = self.fleet.snapshot.pools[state.deployment.model]
        if len(pool.members) == 1:
            raise Conflict(
                f"{name!r} is model {pool.model!r}'s last worker: drain it instead, or add "
                "another first"
            )
        state = await self.drain(name, by)
        left = await self.idle(state, timeout)
        change = self.changes.get(name)
        if change is not None and change.spec is not None:
            await self.store.delete(name)
            await self._changed(name)
        else:
            await self._put(name, state.deployment.model, None, REMOVED, by)
        return state, left
