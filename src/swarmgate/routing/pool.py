"""Deployments and the pools that group them by model.

A ``Backend`` is one deployment at run time: its frozen config plus the few counters the balancer
reads (in-flight requests). A ``Pool`` is a model's deployments; the ``Registry`` resolves a
client's model name or alias to its pool. Everything here is built once in ``create_app``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from swarmgate.config import Deployment, Model, Settings, Timeouts
from swarmgate.errors import ModelNotFound, NoDeployment
from swarmgate.routing.balancer import Balancer, RoundRobin
from swarmgate.types import ModelType


@dataclass(eq=False, slots=True)
class Backend:
    name: str
    model: str  # the model id clients use
    upstream_model: str  # the name the upstream knows it by
    config: Deployment
    timeouts: Timeouts
    base_url: str
    in_flight: int = 0
    # Response headers naming this deployment, encoded once rather than per request.
    headers: tuple[tuple[bytes, bytes], ...] = ()
    # A non-streamed answer's first byte comes only when generation is done: it is bounded
    # by the total timeout, not by the time-to-first-token bound.
    unary_timeouts: Timeouts | None = None

    def __post_init__(self) -> None:
        self.headers = (
            (b"x-swarmgate-deployment", self.name.encode()),
            (b"x-swarmgate-model", self.model.encode()),
        )
        self.unary_timeouts = self.timeouts.model_copy(update={"first_byte": self.timeouts.total})

    @property
    def has_capacity(self) -> bool:
        return self.in_flight < self.config.max_concurrent


@dataclass(eq=False, slots=True)
class Pool:
    model: str
    config: Model
    backends: tuple[Backend, ...]
    balancer: Balancer = field(default_factory=RoundRobin)

    @property
    def type(self) -> ModelType:
        return self.config.type

    def pick(self, exclude: Iterable[Backend] = ()) -> Backend:
        excluded = set(exclude)
        candidates = [b for b in self.backends if b.has_capacity and b not in excluded]
        if not candidates:
            raise NoDeployment(
                f"no deployment of model {self.model!r} can take the request now "
                f"({len(self.backends)} configured, all busy or unavailable)"
            )
        return candidates[self.balancer.choose(len(candidates))]

    @property
    def usable(self) -> int:
        return sum(1 for b in self.backends if b.has_capacity)


def _backend_name(model: str, index: int, dep: Deployment) -> str:
    if dep.name:
        return dep.name
    parts = urlsplit(dep.url)
    return f"{model}@{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


class Registry:
    """Model ids and aliases → pools; the default model for requests that name none."""

    def __init__(self, settings: Settings) -> None:
        self.pools: dict[str, Pool] = {}
        self._names: dict[str, Pool] = {}
        for model_id, model in settings.models.items():
            names = [_backend_name(model_id, i, dep) for i, dep in enumerate(model.deployments)]
            names = [n if names.count(n) == 1 else f"{n}#{i}" for i, n in enumerate(names)]
            backends = tuple(
                Backend(
                    name=names[i],
                    model=model_id,
                    upstream_model=dep.model or model_id,
                    config=dep,
                    timeouts=settings.timeouts_for(dep),
                    base_url=dep.url,
                )
                for i, dep in enumerate(model.deployments)
            )
            pool = Pool(model=model_id, config=model, backends=backends)
            self.pools[model_id] = pool
            self._names[model_id] = pool
            for alias in model.aliases:
                self._names[alias] = pool
        self.default = self._names[settings.default_model] if settings.default_model else None

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

    def backends(self) -> list[Backend]:
        return [b for pool in self.pools.values() for b in pool.backends]
