"""The fleet: frozen deployments, their run-time state, and the pools that group them by model.

Config and state are apart. A ``Deployment`` is one configured model server, resolved and
frozen (name, URLs, timeouts, prices, the response headers naming it). Its ``DeploymentState``
is what changes while the gateway runs: requests in flight today; health and circuit state
later. A ``Pool`` is a model's states; ``FleetSnapshot`` resolves a model name or alias to its
pool. ``Fleet`` holds the current snapshot and replaces it in one assignment (reload, discovery
and the fleet API will use ``replace``); a deployment that survives a replacement keeps its
state, so its in-flight count stays true. Only a ``Lease`` changes an in-flight count; when
requests wait for a slot, a released lease hands its slot to the pool's ``SlotQueue``
(``limits/queue.py``) instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import swarmgate.routing.health as routing_health
from swarmgate.config import Deployment as DeploymentConfig
from swarmgate.config import Model, Settings, Timeouts
from swarmgate.errors import ModelNotFound
from swarmgate.limits.queue import SlotQueue, TierPolicy
from swarmgate.routing.balancers import Balancer, LeastOutstanding, balancer_for
from swarmgate.routing.load import Load
from swarmgate.types import ModelType, Origin, Outcome

if TYPE_CHECKING:
    from swarmgate.config import CircuitBreaker, HealthCheck


@dataclass(frozen=True, slots=True)
class Deployment:
    name: str
    model: str  # the model id clients use
    upstream_model: str  # the name the upstream knows it by
    url: str  # base URL, without /v1
    origin: Origin  # what the transport needs to reach it
    weight: float
    max_concurrent: int
    timeouts: Timeouts
    # A non-streamed answer's first byte comes only when generation is done: it is bounded
    # by the total timeout, not by the time-to-first-token bound.
    unary_timeouts: Timeouts
    api_key: str | None
    metrics_url: str | None  # its Prometheus metrics, read by ``routing/scrape.py``
    input_cost_per_1k: float
    output_cost_per_1k: float
    cost_per_request: float
    # Response headers naming this deployment, encoded once rather than per request.
    headers: tuple[tuple[bytes, bytes], ...]
    circuit_breaker: CircuitBreaker = routing_health.DEFAULT_BREAKER
    health_check: HealthCheck = routing_health.DEFAULT_PROBES

    @classmethod
    def build(
        cls,
        name: str,
        model: str,
        dep: DeploymentConfig,
        timeouts: Timeouts,
        model_config: Model | None = None,
    ) -> Deployment:
        assert dep.url is not None, "a discovered deployment is built once resolved"
        breaker = dep.circuit_breaker or (model_config.circuit_breaker if model_config else None)
        probes = dep.health_check or (model_config.health_check if model_config else None)
        unary_first_byte = min(timeouts.unary_first_byte or timeouts.total, timeouts.total)
        return cls(
            name=name,
            model=model,
            upstream_model=dep.model or model,
            url=dep.url,
            origin=Origin(dep.url, timeouts.connect, dep.keepalive),
            weight=dep.weight,
            max_concurrent=dep.max_concurrent,
            timeouts=timeouts,
            unary_timeouts=timeouts.model_copy(update={"first_byte": unary_first_byte}),
            api_key=dep.api_key,
            metrics_url=dep.url + dep.metrics_path if dep.metrics_path else None,
            input_cost_per_1k=dep.input_cost_per_1k,
            output_cost_per_1k=dep.output_cost_per_1k,
            cost_per_request=dep.cost_per_request,
            headers=(
                (b"x-swarmgate-deployment", name.encode()),
                (b"x-swarmgate-model", model.encode()),
            ),
            circuit_breaker=breaker or routing_health.DEFAULT_BREAKER,
            health_check=probes or routing_health.DEFAULT_PROBES,
        )

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """The price of one answered request: ``cost_per_request`` plus the tokens' prices."""
        return (
            self.cost_per_request
            + (prompt_tokens * self.input_cost_per_1k + completion_tokens * self.output_cost_per_1k)
            / 1000
        )


class Lease:
    """One request's hold on a deployment slot; ``release`` is idempotent. A released slot
    goes to the pool's queue first: handed over to the next waiter, still counted in flight."""

    __slots__ = ("_state",)

    def __init__(self, state: DeploymentState) -> None:
        state.in_flight += 1
        self._state: DeploymentState | None = state

    @classmethod
    def handed(cls, state: DeploymentState) -> Lease:
        """The lease of a slot the queue handed over (already counted in flight)."""
        lease = cls.__new__(cls)
        lease._state = state
        return lease

    def release(self) -> None:
        state, self._state = self._state, None
        if state is not None:
            queue = state.queue
            # Usually nobody waits: one attribute test on the hot path. A draining deployment
            # takes no new request, not even a waiter's.
            if queue.waiting and not state.draining and queue.hand_over(state):
                return
            state.in_flight -= 1


class TierLease(Lease):
    """The lease of a request whose tier may hold only a share of the pool: that tier's count
    of held slots (``SlotQueue.held``) goes up with it and down on release."""

    __slots__ = ("_tier",)

    def __init__(self, state: DeploymentState, tier: TierPolicy, *, handed: bool = False) -> None:
        if handed:  # in flight and held already, by the queue that handed it over
            self._state = state
        else:
            super().__init__(state)
            state.queue.hold(tier)
        self._tier = tier

    def release(self) -> None:
        state = self._state
        if state is not None:
            # Before the slot is handed over, so that a waiter of this tier may have it.
            state.queue.unhold(self._tier)
        super().release()


@dataclass(eq=False, slots=True)
class DeploymentState:
    """A deployment at run time. Balancers read it through ``DeploymentView``."""

    deployment: Deployment
    # Its own metrics as last scraped: replaced whole by the scraper, read by balancers.
    load: Load | None = None
    in_flight: int = 0
    # Drained by an operator (routing/registry.py): no new requests; those in flight finish.
    draining: bool = False
    # The line for a slot of this deployment's pool (one queue shared by the pool).
    queue: SlotQueue[DeploymentState] = field(default_factory=SlotQueue)
    # Circuit, ejection and probes: whether it may be picked (routing/health.py).
    health: routing_health.DeploymentHealth = field(init=False)

    def __post_init__(self) -> None:
        d = self.deployment
        self.health = routing_health.DeploymentHealth(d.circuit_breaker, d.health_check)

    @property
    def name(self) -> str:
        return self.deployment.name

    @property
    def weight(self) -> float:
        return self.deployment.weight

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return self.deployment.cost(prompt_tokens, completion_tokens)

    @property
    def max_concurrent(self) -> int:
        return self.deployment.max_concurrent

    @property
    def has_capacity(self) -> bool:
        return not self.draining and self.in_flight < self.deployment.max_concurrent

    @property
    def failures(self) -> int:
        """Consecutive failed attempts, as traffic saw them."""
        return self.health.consecutive

    @property
    def healthy(self) -> bool:
        """Usable: circuit closed or half-open, not ejected, probes up."""
        return self.health.usable

    def lease(self) -> Lease:
        return Lease(self)

    def observe(self, outcome: Outcome) -> None:
        """How an attempt here ended (called once per attempt, from the accounting)."""
        self.health.observe(outcome)


@dataclass(eq=False, slots=True)
class Pool:
    model: str
    config: Model
    members: tuple[DeploymentState, ...]
    balancer: Balancer = field(default_factory=LeastOutstanding)
    strategy: str = "least_outstanding"  # the name of ``balancer``'s strategy, for status views
    capacity: int = field(init=False)  # its deployments' max_concurrent, summed
    # The pool's line; a pool may have no member (a DNS name not resolved yet).
    queue: SlotQueue[DeploymentState] = field(init=False)

    @property
    def type(self) -> ModelType:
        return self.config.type

    def __post_init__(self) -> None:
        # One queue for the pool; after a fleet replacement, the one a surviving deployment
        # brings along (with its waiters and held counts), bound to the new capacity.
        self.capacity = sum(m.max_concurrent for m in self.members)
        shared = next((m.queue for m in self.members if m.queue.capacity), None)
        queue = shared or SlotQueue()
        queue.capacity = self.capacity
        for member in self.members:
            member.queue = queue
        self.queue = queue

    @property
    def usable(self) -> int:
        """Deployments that can take a request now: healthy, with a free slot."""
        return sum(1 for m in self.members if m.has_capacity and m.healthy)

    @property
    def healthy(self) -> int:
        """Deployments that are up (circuit not open, not ejected, probes up), busy or not."""
        return sum(1 for m in self.members if m.healthy)


def _deployment_name(model: str, dep: DeploymentConfig) -> str:
    if dep.name:
        return dep.name
    parts = urlsplit(dep.url or "")
    return f"{model}@{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


def deployments_of(settings: Settings) -> dict[str, tuple[Deployment, ...]]:
    """Every model's deployments, named (``model@host:port``, ``#i`` added when two clash).
    A ``discover`` entry has none of its own: ``routing/discovery.py`` expands it first."""
    out = {}
    for model_id, model in settings.models.items():
        servers = [dep for dep in model.deployments if dep.url is not None]
        names = [_deployment_name(model_id, dep) for dep in servers]
        names = [n if names.count(n) == 1 else f"{n}#{i}" for i, n in enumerate(names)]
        out[model_id] = tuple(
            Deployment.build(names[i], model_id, dep, settings.timeouts_for(dep), model)
            for i, dep in enumerate(servers)
        )
    return out


class FleetSnapshot:
    """Model ids and aliases → pools, and the default model; never changed once built."""

    def __init__(
        self, pools: dict[str, Pool], aliases: dict[str, str], default_model: str | None
    ) -> None:
        self.pools = pools
        self._names = dict(pools)
        for alias, model in aliases.items():
            self._names[alias] = pools[model]
        self.default = self._names[default_model] if default_model else None

    def resolve(self, name: str | None, visible: Callable[[str], bool] = bool) -> Pool:
        """The pool for a model id or alias; ``visible`` filters the models an error lists."""
        if name is None:
            if self.default is None:
                raise ModelNotFound("you must provide a model parameter", param="model")
            return self.default
        pool = self._names.get(name)
        if pool is None:
            raise ModelNotFound(
                f"The model {name!r} does not exist. Available models: "
                + (", ".join(sorted(m for m in self.pools if visible(m))) or "(none)"),
                param="model",
            )
        return pool

    def states(self) -> Iterator[DeploymentState]:
        for pool in self.pools.values():
            yield from pool.members


class Fleet:
    def __init__(self, settings: Settings) -> None:
        self.snapshot = self._build(settings, {}, {})

    @staticmethod
    def _build(
        settings: Settings,
        old: dict[tuple[str, str, str], DeploymentState],
        old_pools: dict[str, Pool],
    ) -> FleetSnapshot:
        pools = {}
        for model_id, deployments in deployments_of(settings).items():
            members = []
            for d in deployments:
                # The same state object, so that leases taken before the swap release into it.
                state = old.get((d.model, d.name, d.url)) or DeploymentState(d)
                state.deployment = d
                state.health.configure(d.circuit_breaker, d.health_check)
                members.append(state)
            model = settings.models[model_id]
            # Decided here, once per build: the default depends on the whole fleet's config.
            balancing = settings.balancing_of(model)
            # The same balancer while its settings stay: what it learnt (a prefix index, a
            # ring, smooth round robin's turns, all kept by deployment name) outlives a
            # reload or a change found in DNS.
            previous = old_pools.get(model_id)
            if (
                previous is not None
                and previous.config.balancer == model.balancer
                and previous.strategy == balancing.strategy
            ):
                balancer = previous.balancer
            else:
                balancer = balancer_for(balancing)
            pools[model_id] = Pool(
                model_id, model, tuple(members), balancer=balancer, strategy=balancing.strategy
            )
        aliases = {a: m for m, model in settings.models.items() for a in model.aliases}
        return FleetSnapshot(pools, aliases, settings.default_model)

    def resolve(self, name: str | None, visible: Callable[[str], bool] = bool) -> Pool:
        return self.snapshot.resolve(name, visible)

    def replace(self, settings: Settings) -> None:
        """Swap in the fleet ``settings`` describe, in one assignment.

        A deployment that stays (same model, name and URL) carries its state object over
        (with its new settings); leases on a deployment that went away release into a state
        nobody reads any more.
        """
        old = {(s.deployment.model, s.name, s.deployment.url): s for s in self.snapshot.states()}
        self.snapshot = self._build(settings, old, self.snapshot.pools)
