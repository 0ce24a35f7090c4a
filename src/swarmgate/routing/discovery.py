"""Deployments found in DNS: how a Kubernetes headless service's pods become a model's fleet.

A deployment entry with ``discover`` (``{dns: llm.svc.cluster.local, port: 8000}`` for A/AAAA
records, ``{srv: _http._tcp.llm.svc.cluster.local}`` for SRV records) stands for every server
that name resolves to. ``expand(settings, answers)`` is a pure function: the settings with each
such entry replaced by one concrete deployment per address found (its settings, with the
address's URL and a stable name, ``model@10.0.0.5:8000`` or ``model@pod-0.llm:8000`` for an
SRV target), so that the rest of the fleet (``routing/registry.py``, ``Fleet.replace``) sees
deployments as the file could have listed them: one that stays keeps its state and its
requests in flight, one that goes away finishes what it holds.

``Discovery`` resolves every entry at start, then each again every ``interval`` in the
background, and hands the answers over when they changed. A failed lookup (timeout, no such
name, no address) keeps the last answer: a DNS outage, or a service scaled to nothing for a
moment, never empties a pool (a deployment that is really gone is found out by its probes and
its circuit). It is logged once per outage, and its end once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from swarmgate.config import Deployment as DeploymentConfig
from swarmgate.config import Discover, Settings, nameserver_address
from swarmgate.errors import DiscoveryFailed
from swarmgate.observability.metrics import Metrics
from swarmgate.routing.dns import DnsResolver, Resolver

log = logging.getLogger("swarmgate.discovery")


@dataclass(frozen=True, slots=True)
class Target:
    """One ``discover`` entry of one model (the same entry after a reload is the same
    target, and keeps its answer)."""

    model: str
    discover: Discover

    @property
    def source(self) -> str:
        d = self.discover
        return f"SRV {d.srv}" if d.srv is not None else f"{d.dns}:{d.port}"


@dataclass(frozen=True, slots=True)
class Found:
    """One server a target resolved to: ``label`` names it, ``host`` reaches it."""

    label: str  # the address, or the SRV target's name
    host: str  # an IP address
    port: int


Answers = Mapping[Target, tuple[Found, ...]]


def targets(settings: Settings) -> list[Target]:
    return [
        Target(model_id, dep.discover)
        for model_id, model in settings.models.items()
        for dep in model.deployments
        if dep.discover is not None
    ]


def _url(scheme: str, host: str, port: int) -> str:
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def _found(model_id: str, dep: DeploymentConfig, answers: Answers) -> list[DeploymentConfig]:
    """The deployments a ``discover`` entry stands for now."""
    assert dep.discover is not None
    prefix = dep.name or model_id
    return [
        dep.model_copy(
            update={
                "url": _url(dep.discover.scheme, found.host, found.port),
                "discover": None,
                "name": f"{prefix}@{found.label}:{found.port}",
            }
        )
        for found in answers.get(Target(model_id, dep.discover), ())
    ]


def expand(settings: Settings, answers: Answers) -> Settings:
    """``settings`` with every ``discover`` entry replaced by the deployments found for it
    (none yet: none)."""
    if not any(dep.discover for m in settings.models.values() for dep in m.deployments):
        return settings
    models = {}
    for model_id, model in settings.models.items():
        deployments = []
        for dep in model.deployments:
            if dep.discover is None:
                deployments.append(dep)
            else:
                deployments.extend(_found(model_id, dep, answers))
        models[model_id] = model.model_copy(update={"deployments": tuple(deployments)})
    return settings.model_copy(update={"models": models})


def found_names(settings: Settings, answers: Answers) -> set[str]:
    """The names of the deployments found in DNS (their workers' ``source`` is ``dns``)."""
    return {
        str(found.name)
        for model_id, model in settings.models.items()
        for dep in model.deployments
        if dep.discover is not None
        for found in _found(model_id, dep, answers)
    }


async def resolve(target: Target, resolver: Resolver) -> tuple[tuple[Found, ...], int]:
    """The servers ``target`` names now, at most its ``max_addresses`` (the first ones, in a
    stable order), and how many there were; ``DiscoveryFailed`` if none."""
    d = target.discover
    found: list[Found] = []
    if d.dns is not None:
        assert d.port is not None, "validated: dns comes with a port"
        found = [Found(a, a, d.port) for a in await resolver.addresses(d.dns)]
    else:
        assert d.srv is not None
        problems = []
        for name, port in await resolver.services(d.srv):
            try:
                addresses = await resolver.addresses(name)
            except DiscoveryFailed as exc:  # one target that does not resolve: the others
                problems.append(str(exc))
                continue
            if len(addresses) == 1:
                found.append(Found(name, addresses[0], port))
            else:  # one name, several servers: each its own deployment
                found.extend(Found(a, a, port) for a in addresses)
        if not found:
            raise DiscoveryFailed(f"{d.srv}: no SRV target resolves ({'; '.join(problems)})")
    unique = list(dict.fromkeys(found))
    return tuple(unique[: d.max_addresses]), len(unique)


def resolver_of(settings: Settings) -> Resolver:
    config = settings.discovery
    servers = [nameserver_address(s) for s in config.nameservers]
    return DnsResolver(servers, config.timeout)


class Discovery:
    """Resolves the targets in the background; ``on_change`` gets every answer whenever one
    changed (it must not await: it swaps the fleet)."""

    def __init__(
        self,
        settings: Settings,
        on_change: Callable[[dict[Target, tuple[Found, ...]]], None],
        resolver: Resolver | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.on_change = on_change
        self.metrics = metrics
        self._given = resolver  # tests' twin; else one built from the settings
        self.settings = settings
        self.resolver: Resolver | None = resolver
        self.answers: dict[Target, tuple[Found, ...]] = {}
        self.failing: dict[Target, str] = {}  # targets whose last lookup failed: why
        self._truncated: set[Target] = set()
        self._tasks: dict[Target, asyncio.Task[None]] = {}

    async def start(self) -> None:
        """Resolve every target once (together, each bounded by the lookup timeout), then
        keep them resolved."""
        await self.reconfigure(self.settings)

    async def reconfigure(self, settings: Settings, *, notify: bool = True) -> None:
        """New settings (a reload): targets that stay keep their answer and are resolved
        again now, new ones are resolved now, those gone are dropped. Without ``notify``
        the caller applies ``answers`` itself (a reload swaps the fleet once, after)."""
        await self._cancel()
        self.settings = settings
        wanted = targets(settings)
        if not wanted:
            self.resolver = self._given
            changed = bool(self.answers)
            self.answers = {}
            if changed and notify:
                self.on_change({})
            return
        if self._given is None:
            try:
                self.resolver = resolver_of(settings)
            except DiscoveryFailed as exc:
                log.error("discovery: %s", exc)
                self.resolver = None
        kept = {t: self.answers[t] for t in wanted if t in self.answers}
        self.answers = kept
        self.failing = {t: why for t, why in self.failing.items() if t in kept}
        await asyncio.gather(*(self._refresh(t) for t in dict.fromkeys(wanted)))
        if notify:
            self.on_change(dict(self.answers))
        loop = asyncio.get_running_loop()
        for target in dict.fromkeys(wanted):
            self._tasks[target] = loop.create_task(self._run(target), name="discovery")

    async def stop(self) -> None:
        await self._cancel()

    async def _cancel(self) -> None:
        tasks, self._tasks = list(self._tasks.values()), {}
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self, target: Target) -> None:
        while True:
            await asyncio.sleep(target.discover.interval)
            try:
                if await self._refresh(target):
                    self.on_change(dict(self.answers))
            except Exception:  # a bug must not end the loop
                log.exception("discovery: resolving %s failed", target.source)

    async def _refresh(self, target: Target) -> bool:
        """Resolve ``target``; whether its answer changed. A failure keeps the last one."""
        resolver = self.resolver
        try:
            if resolver is None:
                raise DiscoveryFailed("no resolver (see the error above)")
            found, total = await resolve(target, resolver)
        except DiscoveryFailed as exc:
            if self.metrics is not None:
                self.metrics.discovery_lookup(target.model, False)
            if target not in self.failing:  # once per outage
                kept = len(self.answers.get(target, ()))
                log.warning(
                    "discovery: model %s: %s cannot be resolved (%s); keeping its last "
                    "answer (%d deployments)",
                    target.model,
                    target.source,
                    exc,
                    kept,
                )
            self.failing[target] = str(exc)
            return False
        if self.metrics is not None:
            self.metrics.discovery_lookup(target.model, True)
        if self.failing.pop(target, None) is not None:
            log.info("discovery: model %s: %s resolves again", target.model, target.source)
        if total > len(found) and target not in self._truncated:
            log.warning(
                "discovery: model %s: %s names %d servers; using the first %d "
                "(discover.max_addresses)",
                target.model,
                target.source,
                total,
                len(found),
            )
            self._truncated.add(target)
        elif total <= len(found):
            self._truncated.discard(target)
        if self.answers.get(target) == found:
            return False
        before = {f.label for f in self.answers.get(target, ())}
        self.answers[target] = found
        now = {f.label for f in found}
        log.info(
            "discovery: model %s: %s: %d deployments (+%d, -%d)",
            target.model,
            target.source,
            len(found),
            len(now - before),
            len(before - now),
        )
        return True
