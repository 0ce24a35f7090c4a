"""The configuration of model-level routing, and its checks against the configured models.

``routing:`` in the YAML (``ModelRouting``): ``model: "auto"`` and its rules, header and path
routes, weighted splits (A/B tests) and canaries, and transforms per route; a model's own
``fallbacks``, ``context_window`` and ``transform`` are fields of ``config.Model`` that use the
types here. Frozen, parsed once by ``config.py``; ``problems`` cross-checks it against the
models (unknown names, fallback cycles, weights that do not sum to 100) so that a bad config
is refused at start with one line per problem, as every other config problem is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# What a request can need of a model, read from its body (routing.rules.needs_of): "tools"
# (tools or functions), "vision" (an image content part), "json_schema" (response_format of
# type json_schema). A model's ``capabilities`` stay free-form tags (shown in /v1/models);
# these names, and their synonyms, are the ones routing reads.
CAPABILITIES = frozenset({"tools", "vision", "json_schema"})
SYNONYMS = {"function_calling": "tools", "functions": "tools", "images": "vision"}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Transform(_Frozen):
    """Seed 003's request- and response-transformer, for a model or a route.

    ``set_params`` are defaults written only when the client sent none (``max_tokens: 256``);
    ``cap_params`` bound a numeric parameter the client sent (``max_tokens: 1024``: a request
    for 4000 goes up as 1024); headers are added to (or removed from) what goes upstream and
    what the client is answered."""

    set_params: dict[str, Any] = {}
    cap_params: dict[str, Annotated[float, Field(ge=0)]] = {}
    request_headers: dict[str, str] = {}
    remove_request_headers: tuple[str, ...] = ()
    response_headers: dict[str, str] = {}
    remove_response_headers: tuple[str, ...] = ()

    @field_validator("set_params")
    @classmethod
    def _not_model(cls, value: dict[str, Any]) -> dict[str, Any]:
        if "model" in value or "stream" in value:
            raise ValueError("'model' and 'stream' are chosen by routing, not set here")
        return value


class Condition(_Frozen):
    """When a rule applies: every field given must hold (none given: always)."""

    min_prompt_tokens: Annotated[int, Field(ge=0)] | None = None
    max_prompt_tokens: Annotated[int, Field(ge=0)] | None = None
    tiers: tuple[str, ...] = ()  # the caller's tier is one of these
    header: dict[str, str] = {}  # each header has this value (names case-insensitive)
    needs: tuple[str, ...] = ()  # the request needs each of these capabilities


class Rule(_Frozen):
    """A rule narrows the candidates of ``model: "auto"``; the cheapest left is chosen."""

    name: str = ""
    when: Condition = Condition()
    require: tuple[str, ...] = ()  # capabilities the chosen model must have
    models: tuple[str, ...] = ()  # only these models (empty: any candidate)
    exclude: tuple[str, ...] = ()  # never these


class Auto(_Frozen):
    name: str = "auto"  # the model name that asks for a choice
    # A request that names no model is routed as "auto" (instead of to default_model).
    when_missing: bool = False
    # The models it chooses from (empty: every chat model); in this order on equal prices.
    candidates: tuple[str, ...] = ()
    # The completion tokens a request without max_tokens is priced with.
    expected_completion_tokens: Annotated[int, Field(ge=0)] = 256
    rules: tuple[Rule, ...] = ()


class Route(_Frozen):
    """A header value or a path prefix that sends a request to ``model`` (a model, an alias
    or a split), whatever model its body names. The first route that matches wins."""

    name: str = ""
    header: str | None = None  # e.g. x-model-route
    value: str | None = None  # the header's value (required with header)
    path_prefix: str | None = None  # e.g. /fast: /fast/v1/chat/completions
    model: str
    transform: Transform | None = None

    @model_validator(mode="after")
    def _one_match(self) -> Route:
        if (self.header is None) == (self.path_prefix is None):
            raise ValueError("a route matches on exactly one of 'header' or 'path_prefix'")
        if self.header is not None and self.value is None:
            raise ValueError("a header route needs the header's 'value'")
        prefix = self.path_prefix
        if prefix is not None and (
            not prefix.startswith("/") or prefix.endswith("/") or prefix.startswith("/v1")
        ):
            raise ValueError("path_prefix is like '/fast': a leading '/', none at the end")
        return self


class Split(_Frozen):
    """A weighted split of the requests for a name (a model or a new name) among models:
    percentages summing to 100. A user sees one variant: the pick hashes the sticky key."""

    variants: dict[str, Annotated[float, Field(ge=0)]]
    # The header whose value is the sticky key (a session id); without it, the caller's key.
    sticky_header: str | None = None

    @field_validator("variants")
    @classmethod
    def _hundred(cls, value: dict[str, float]) -> dict[str, float]:
        total = sum(value.values())
        if not value or abs(total - 100) > 1e-6:
            raise ValueError(f"variant weights are percentages and must sum to 100 (got {total:g})")
        return value


class Canary(_Frozen):
    """``percent`` of a model's requests go to ``model``: a split of two variants."""

    model: str
    percent: Annotated[float, Field(ge=0, le=100)]
    sticky_header: str | None = None

    def split(self, primary: str) -> Split:
        return Split(
            variants={primary: 100 - self.percent, self.model: self.percent},
            sticky_header=self.sticky_header,
        )


class ModelRouting(_Frozen):
    auto: Auto | None = None
    routes: tuple[Route, ...] = ()
    splits: dict[str, Split] = {}
    canaries: dict[str, Canary] = {}

    @property
    def configured(self) -> bool:
        return bool(self.auto or self.routes or self.splits or self.canaries)

    def all_splits(self) -> dict[str, Split]:
        return {**self.splits, **{m: c.split(m) for m, c in self.canaries.items()}}


class ModelFacts(_Frozen):
    """What the checks need of one configured model."""

    aliases: tuple[str, ...] = ()
    capabilities: tuple[str, ...] = ()
    fallbacks: tuple[str, ...] = ()
    chat: bool = True


def capability(name: str) -> str:
    return SYNONYMS.get(name, name)


def problems(models: Mapping[str, ModelFacts], routing: ModelRouting) -> list[str]:
    """Every problem of the routing config and the models' fallbacks, one line each."""
    names = set(models) | {a for m in models.values() for a in m.aliases}
    out = _fallback_problems(models, names)
    splits = routing.all_splits()
    both = set(routing.splits) & set(routing.canaries)
    out += [f"routing.canaries.{n}: also a split; give it one of the two" for n in sorted(both)]
    targets = names | set(splits)
    auto = routing.auto
    if auto is not None:
        if auto.name in names:
            out.append(f"routing.auto.name: {auto.name!r} is also a model name")
        out += _unknown("routing.auto.candidates", auto.candidates, names)
        out += [
            f"routing.auto.candidates: {c!r} is not a chat model"
            for c in auto.candidates
            if c in models and not models[c].chat
        ]
        for i, rule in enumerate(auto.rules):
            where = f"routing.auto.rules[{i}]"
            out += _unknown(f"{where}.models", rule.models, names)
            out += _unknown(f"{where}.exclude", rule.exclude, names)
            out += _unknown_capabilities(f"{where}.require", rule.require)
            out += _unknown_capabilities(f"{where}.when.needs", rule.when.needs)
        targets.add(auto.name)
    for i, route in enumerate(routing.routes):
        if route.model not in targets:
            out.append(f"routing.routes[{i}].model: {route.model!r} is not a model or a split")
    for name, split in splits.items():
        section = "canaries" if name in routing.canaries else "splits"
        if name in {a for m in models.values() for a in m.aliases}:
            out.append(f"routing.{section}.{name}: an alias; split the model it names")
        out += _unknown(f"routing.{section}.{name}.variants", tuple(split.variants), set(models))
    return out


def _unknown(where: str, given: Sequence[str], known: set[str]) -> list[str]:
    return [f"{where}: {n!r} is not a configured model" for n in given if n not in known]


def _unknown_capabilities(where: str, given: Sequence[str]) -> list[str]:
    return [
        f"{where}: {c!r} is not a capability routing knows (one of "
        f"{', '.join(sorted(CAPABILITIES))})"
        for c in given
        if capability(c) not in CAPABILITIES
    ]


def _fallback_problems(models: Mapping[str, ModelFacts], names: set[str]) -> list[str]:
    out = []
    for name, model in models.items():
        for fallback in model.fallbacks:
            if fallback not in models:
                out.append(f"models.{name}.fallbacks: {fallback!r} is not a configured model")
            elif fallback == name:
                out.append(f"models.{name}.fallbacks: a model cannot fall back to itself")
    cycle = fallback_cycle({n: m.fallbacks for n, m in models.items()})
    if cycle:
        out.append(f"models.{cycle[0]}.fallbacks: a cycle: {' -> '.join(cycle)}")
    return out


def fallback_cycle(chains: Mapping[str, Sequence[str]]) -> list[str] | None:
    """A cycle through the models' fallbacks (``[a, b, a]``), or None. Depth-first search."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        for nxt in chains.get(node, ()):
            if nxt != node:  # reported on its own
                found = visit(nxt, [*path, node])
                if found:
                    return found
        done.add(node)
        return None

    for start in chains:
        found = visit(start, [])
        if found:
            return found
    return None
