"""Which model serves a request: routes, ``model: "auto"``, splits, context windows, edits.

``ModelSelector`` is built once from the settings (in the ``Gateway``) and decides from what a
request says, with no I/O, in this order:

1. a route (``routing.routes``): the request's path prefix or a header value names the model,
   whatever its body names;
2. else the body's model; none, with ``routing.auto.when_missing``, is ``auto``;
3. ``auto``: the cheapest model the rules admit (``routing.rules``);
4. a split or canary of that name: the variant for the caller's sticky key (``splits``);
5. a prompt longer than the model's context window: the first fallback it fits;
6. the model's and the route's transforms, compiled into one request and one response edit.

The fallbacks of a model whose deployments are exhausted are asked for by the inference stage
after its call failed (``next_model``), not here.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from swarmgate.errors import BadRequest
from swarmgate.routing import rules, splits
from swarmgate.routing.fallbacks import FallbackChains
from swarmgate.routing.policy import Route, capability
from swarmgate.routing.transform import RequestEdit, ResponseEdit, merged
from swarmgate.types import ModelType

if TYPE_CHECKING:
    from swarmgate.config import Settings


@dataclass(frozen=True, slots=True)
class Choice:
    model: str | None  # a model id (or a name for the fleet to resolve); None: the default
    split: str | None = None  # the split the variant was picked in
    variant: str | None = None
    request_edit: RequestEdit | None = None
    response_edit: ResponseEdit | None = None


@dataclass(frozen=True, slots=True)
class _Split:
    variants: tuple[tuple[str, float], ...]
    sticky_header: str | None


class ModelSelector:
    def __init__(self, settings: Settings) -> None:
        models = settings.models
        routing = settings.routing
        self.aliases = {a: name for name, m in models.items() for a in m.aliases}
        self.auto = routing.auto
        self.candidates: tuple[rules.Candidate, ...] = ()
        if self.auto is not None:
            names = self.auto.candidates or tuple(
                n for n, m in models.items() if m.type in (ModelType.CHAT, ModelType.COMPLETION)
            )
            self.candidates = tuple(
                rules.Candidate(
                    n,
                    frozenset(capability(c) for c in models[n].capabilities),
                    models[n].context_window,
                    tuple(
                        (d.cost_per_request, d.input_cost_per_1k, d.output_cost_per_1k)
                        for d in models[n].deployments
                    ),
                )
                for n in (self.aliases.get(c, c) for c in names)
            )
        self.header_routes = tuple(r for r in routing.routes if r.header is not None)
        self.path_routes = tuple(r for r in routing.routes if r.path_prefix is not None)
        self.splits = {
            name: _Split(tuple(s.variants.items()), s.sticky_header and s.sticky_header.lower())
            for name, s in routing.all_splits().items()
        }
        self.windows = {n: m.context_window for n, m in models.items()}
        self.fallbacks = FallbackChains({n: m.fallbacks for n, m in models.items()})
        self.edits = {
            n: (RequestEdit.of(m.transform), ResponseEdit.of(m.transform))
            for n, m in models.items()
            if m.transform is not None
        }
        self.route_edits = {
            id(r): (RequestEdit.of(r.transform), ResponseEdit.of(r.transform))
            for r in routing.routes
            if r.transform is not None
        }

    @classmethod
    def of(cls, settings: Settings) -> ModelSelector | None:
        """A selector, or None when nothing of model routing is configured (the hot path then
        pays one attribute test)."""
        models = settings.models.values()
        if settings.routing.configured or any(
            m.fallbacks or m.context_window or m.transform for m in models
        ):
            return cls(settings)
        return None

    def path_route(self, path: str) -> tuple[str, Route] | None:
        """The inference path behind a path route's prefix, and the route."""
        for route in self.path_routes:
            prefix = route.path_prefix
            assert prefix is not None
            if path.startswith(prefix + "/"):
                return path[len(prefix) :], route
        return None

    def choose(
        self,
        requested: str | None,
        payload: Mapping[str, Any],
        headers: Mapping[str, str],
        *,
        path: str = "",
        tier: str = "default",
        sticky: str = "",
        allowed: Callable[[str], bool] | None = None,
    ) -> Choice:
        """The model for a request; ``headers`` are the forwarded ones (lower-case names),
        ``sticky`` the caller's key (the fallback of a split's sticky header), ``allowed``
        the models the caller may use (``auto`` chooses among those only)."""
        route = self._route(path, headers)
        name = route.model if route is not None else requested
        auto = self.auto
        if auto is not None and (name == auto.name or (name is None and auto.when_missing)):
            facts = rules.facts_of(payload, auto.expected_completion_tokens, tier, headers)
            candidates = self.candidates
            if allowed is not None:
                candidates = tuple(c for c in candidates if allowed(c.name))
            name = rules.choose(candidates, auto.rules, facts)
        if name is None:
            return Choice(None)
        name = self.aliases.get(name, name)
        split_name = variant = None
        split = self.splits.get(name)
        if split is not None:
            key = (split.sticky_header and headers.get(split.sticky_header)) or sticky
            variants = split.variants
            if allowed is not None:  # a caller held to some models gets one of those
                variants = tuple((v, w) for v, w in variants if allowed(v))
            if any(w > 0 for _, w in variants):
                split_name, name = name, splits.pick(name, key, _percent(variants))
                variant = name
        if self.windows.get(name):
            name = self._fitting(name, payload)
        request_edit, response_edit = self.edits.get(name, (None, None))
        if route is not None and route.transform is not None:
            route_request, route_response = self.route_edits[id(route)]
            request_edit = route_request or request_edit  # a route's own edit wins
            response_edit = merged([response_edit, route_response])
        if variant is not None:
            assert split_name is not None
            tag = ResponseEdit(((b"x-swarmgate-variant", variant.encode()),))
            response_edit = merged([response_edit, tag])
        return Choice(
            name,
            split_name,
            variant,
            request_edit,
            response_edit,
        )

    def _route(self, path: str, headers: Mapping[str, str]) -> Route | None:
        if path and self.path_routes:
            found = self.path_route(path)
            if found is not None:
                return found[1]
        for route in self.header_routes:
            assert route.header is not None
            if headers.get(route.header.lower()) == route.value:
                return route
        return None

    def _fitting(self, name: str, payload: Mapping[str, Any]) -> str:
        tokens = rules.prompt_tokens_of(payload)
        fitted = self.fallbacks.fitting(name, tokens, self.windows)
        if fitted is None:
            raise BadRequest(
                f"the prompt (about {tokens} tokens) is longer than the context window of "
                f"{name!r} ({self.windows[name]} tokens) and of each of its fallbacks",
                param="messages",
                code="context_length_exceeded",
            )
        return fitted

    def next_model(
        self, failed: str, tried: Collection[str], allowed: Callable[[str], bool] = bool
    ) -> str | None:
        """The fallback to try after ``failed`` exhausted its deployments (None: none left)."""
        return self.fallbacks.next_model(failed, tried, allowed)


def _percent(variants: tuple[tuple[str, float], ...]) -> tuple[tuple[str, float], ...]:
    total = sum(w for _, w in variants)
    if abs(total - 100) < 1e-9:
        return variants
    return tuple((v, w * 100 / total) for v, w in variants)
