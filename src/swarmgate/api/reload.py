"""Configuration hot reload: what may change while the gateway runs, and what sets it off.

``restart_needed(running, new)`` and ``applicable(running, new)`` are pure: the settings a
reload can apply in place are the models and their deployments (balancers, health, circuit,
retries, fallbacks, transforms), ``default_model``, ``routing``, ``timeouts``, ``limits`` (but
the counter store chosen at start), ``discovery`` and ``reload``; any other change (server,
store, redis, auth, audit, ledger, native, monitoring, scrape) is reported as needing a restart
and is not applied. ``Gateway.reload`` swaps the parts; requests and streams in flight keep the
pool, plan and lease they started with, so none is dropped.

``Reloader`` reads the config file and applies it, one reload at a time, for every trigger:
the admin API (``POST /admin/reload``, ``swarmgate reload``), a change of the file's content
(``reload.watch``, polled every ``reload.interval`` seconds), SIGHUP (a process that runs its
own event loop in its main thread: uvicorn with one worker) and an event from another process
(with Redis: every worker and replica re-reads its own file). A file with problems is refused
with exactly the lines ``swarmgate check-config`` prints, and the running config stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from swarmgate.config import Settings, load_settings
from swarmgate.errors import ConfigError, ConfigRejected, Conflict
from swarmgate.observability.metrics import Metrics
from swarmgate.store import names
from swarmgate.store.events import EventBus

log = logging.getLogger("swarmgate.reload")

# Applied in place; every other top-level section needs a restart.
RELOADABLE = frozenset(
    {"models", "default_model", "routing", "timeouts", "limits", "discovery", "reload"}
)
# Read once at start, with the counter store they configure.
LIMITS_AT_START = ("redis_timeout", "redis_failure", "replicas", "fleet_capacity")


def _changed_fields(section: str, old: Any, new: Any) -> list[str]:
    if isinstance(old, BaseModel) and isinstance(new, BaseModel):
        fields = type(old).model_fields
        return [f"{section}.{f}" for f in fields if getattr(old, f) != getattr(new, f)]
    return [section] if old != new else []


def restart_needed(running: Settings, new: Settings) -> list[str]:
    """The settings that differ and that a reload does not apply (``server.port``): names
    only, never values (some are secrets)."""
    out = []
    for section in Settings.model_fields:
        if section not in RELOADABLE:
            out += _changed_fields(section, getattr(running, section), getattr(new, section))
    old, limits = running.limits, new.limits
    if running.redis.url and old.any_limit != limits.any_limit:
        # Memory or Redis counters were chosen at start by whether anything is limited.
        out.append("limits.enabled (on or off, with redis.url: the counter store)")
    else:
        out += [f"limits.{f}" for f in LIMITS_AT_START if getattr(old, f) != getattr(limits, f)]
    return out


def applicable(running: Settings, new: Settings) -> Settings:
    """``running`` with what a reload applies taken from ``new``."""
    update = {section: getattr(new, section) for section in RELOADABLE}
    old, limits = running.limits, new.limits
    if running.redis.url and old.any_limit != limits.any_limit:
        update["limits"] = old
    else:
        kept = {f: getattr(old, f) for f in LIMITS_AT_START}
        update["limits"] = limits.model_copy(update=kept)
    return running.model_copy(update=update)


Fleet = Mapping[str, Iterable[str]]  # model → its deployments' names


@dataclass(frozen=True, slots=True)
class Applied:
    """What a reload did: the models and deployments it added and removed, and the changes
    it left for a restart."""

    restart_required: tuple[str, ...] = ()
    models_added: tuple[str, ...] = ()
    models_removed: tuple[str, ...] = ()
    deployments_added: tuple[str, ...] = ()
    deployments_removed: tuple[str, ...] = ()

    @classmethod
    def between(cls, before: Fleet, after: Fleet, restart_required: Iterable[str]) -> Applied:
        old = {name for names in before.values() for name in names}
        new = {name for names in after.values() for name in names}
        return cls(
            tuple(restart_required),
            tuple(sorted(set(after) - set(before))),
            tuple(sorted(set(before) - set(after))),
            tuple(sorted(new - old)),
            tuple(sorted(old - new)),
        )

    def summary(self) -> str:
        parts = [
            f"{what} {', '.join(names)}"
            for what, names in (
                ("models added:", self.models_added),
                ("models removed:", self.models_removed),
                ("deployments added:", self.deployments_added),
                ("deployments removed:", self.deployments_removed),
            )
            if names
        ]
        return "; ".join(parts) or "no model or deployment added or removed"


@dataclass(frozen=True, slots=True)
class Reloaded:
    trigger: str  # api, file, SIGHUP, event
    path: str
    digest: str  # sha256 of the file's bytes
    applied: Applied

    def view(self) -> dict[str, Any]:
        a = self.applied
        return {
            "reloaded": True,
            "trigger": self.trigger,
            "config": self.path,
            "sha256": self.digest,
            "models": {"added": list(a.models_added), "removed": list(a.models_removed)},
            "deployments": {
                "added": list(a.deployments_added),
                "removed": list(a.deployments_removed),
            },
            "restart_required": list(a.restart_required),
        }


def _digest(path: str) -> str | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def _stamp(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


Apply = Callable[[Settings], Awaitable[Applied]]
Audit = Callable[[str, str, str, dict[str, Any]], None]  # action, actor, outcome, details


class Reloader:
    def __init__(
        self,
        path: str | None,
        settings: Settings,
        apply: Apply,
        events: EventBus | None = None,
        audit: Audit | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.path = str(Path(path).resolve()) if path is not None else None
        self.config = settings.reload
        self.apply = apply
        self.events = events
        self.audit = audit
        self.metrics = metrics
        self._lock = asyncio.Lock()
        self._token = os.urandom(6).hex()  # this process, in the events it publishes
        self.digest = _digest(self.path) if self.path else None  # the content running now
        self._rejected: str | None = None  # the content last refused (logged once)
        self._stamp = _stamp(self.path) if self.path else None
        self._watch: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._signals = False
        if events is not None:
            events.subscribe(names.CONFIG_EVENTS, self._heard)

    def start(self) -> None:
        self._restart_watch()
        self._install_sighup()

    async def stop(self) -> None:
        if self._signals:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            self._signals = False
        tasks = [t for t in (self._watch, *self._tasks) if t is not None]
        self._watch = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def reload(self, trigger: str, actor: str | None = None) -> Reloaded:
        """Read the file and apply it. ``ConfigRejected`` (the running config untouched) when
        it has problems; ``Conflict`` when the gateway was not started from a file."""
        if self.path is None:
            raise Conflict(
                "no configuration file to reload: the gateway was not started with --config "
                "(or SWARMGATE_CONFIG)"
            )
        async with self._lock:
            digest = _digest(self.path) or ""
            self._stamp = _stamp(self.path)
            try:
                new = load_settings(self.path)
            except ConfigError as exc:
                self._rejected = digest
                self._audit("config.reload", actor or trigger, "rejected", problems=exc.problems)
                if self.metrics is not None:
                    self.metrics.config_reload(trigger, "rejected")
                raise ConfigRejected(self.path, exc.problems) from None
            applied = await self.apply(new)
            self.digest, self._rejected = digest, None
            self.config = new.reload
        self._restart_watch()
        done = Reloaded(trigger, self.path, digest, applied)
        if self.metrics is not None:
            self.metrics.config_reload(trigger, "ok")
        view = done.view()
        self._audit(
            "config.reload",
            actor or trigger,
            "ok",
            sha256=digest,
            models=view["models"],
            deployments=view["deployments"],
            restart_required=view["restart_required"],
        )
        log.info("config reloaded (%s) from %s: %s", trigger, self.path, applied.summary())
        if applied.restart_required:
            log.warning(
                "config reloaded (%s), but these changes need a restart: %s",
                trigger,
                ", ".join(applied.restart_required),
            )
        return done

    async def publish(self) -> None:
        """Tell the other processes (workers, replicas: with Redis) to re-read their file."""
        if self.events is not None:
            await self.events.publish(names.CONFIG_EVENTS, self._token)

    def _audit(self, action: str, actor: str, outcome: str, **details: Any) -> None:
        if self.audit is not None:
            self.audit(action, actor, outcome, details)

    async def _quietly(self, trigger: str) -> None:
        """A reload nobody waits on (file, SIGHUP, event): its refusal is logged, once per
        content, with check-config's lines."""
        try:
            await self.reload(trigger)
        except ConfigRejected as exc:
            log.error(
                "config not reloaded (%s): invalid configuration in %s:\n%s",
                trigger,
                exc.path,
                "\n".join(f"  {p}" for p in exc.problems),
            )
        except Exception:  # a bug must not end the watch, nor go unseen
            log.exception("config reload (%s) failed", trigger)

    def _spawn(self, trigger: str) -> None:
        task = asyncio.get_running_loop().create_task(self._quietly(trigger), name="reload")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _heard(self, message: str) -> None:
        if message != self._token and self.path is not None:
            self._spawn("event")

    def _install_sighup(self) -> None:
        # Only where this process owns its signals: its loop runs in the main thread (uvicorn
        # with one worker). A supervisor of several workers (uvicorn's, granian's) takes
        # SIGHUP itself and restarts them (docs/configuration.md).
        if self.path is None or not hasattr(signal, "SIGHUP") or self._signals:
            return
        if threading.current_thread() is not threading.main_thread():
            return
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._spawn, "SIGHUP")
        except (NotImplementedError, RuntimeError, ValueError):
            return
        self._signals = True

    def _restart_watch(self) -> None:
        watching = self._watch is not None and not self._watch.done()
        if self.config.watch and self.path is not None and not watching:
            self._watch = asyncio.get_running_loop().create_task(self._run(), name="config-watch")
        elif not self.config.watch and self._watch is not None:
            self._watch.cancel()
            self._watch = None

    async def _run(self) -> None:
        assert self.path is not None
        while self.config.watch:
            await asyncio.sleep(self.config.interval)
            stamp = _stamp(self.path)
            if stamp is None or stamp == self._stamp:
                continue  # unchanged, or gone for a moment (an editor's save, a ConfigMap swap)
            self._stamp = stamp
            digest = _digest(self.path)
            if digest is None or digest in (self.digest, self._rejected):
                continue  # touched, not changed; or refused already (and logged)
            await self._quietly("file")
