"""The balancers that read more than the gateway's own counts, by name, for the config.

``aware_balancer("resource_aware", options)`` and ``aware_balancer("prefix_aware", options)``
build the balancers of ``routing/resource.py`` and ``routing/prefix.py``; the config's
``balancer`` field (``routing/balancers.py``'s ``balancer_for``) hands them these names.
``facts_for`` is the request path's one call: it hashes the prompt only for a pool whose
balancer is prefix-aware, so that every other pool pays nothing for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from swarmgate.config import AWARE_OPTIONS as AWARE
from swarmgate.config import RESOURCE_OPTIONS
from swarmgate.routing.balancers import Balancer, RoutingFacts
from swarmgate.routing.prefix import PrefixAware, PrefixIndex
from swarmgate.routing.resource import ResourceAware

PREFIX_OPTIONS = AWARE["prefix_aware"] - RESOURCE_OPTIONS
COUNTS = frozenset({"block_bytes", "index_blocks"})


def aware_balancer(name: str, options: Mapping[str, Any] | None = None) -> Balancer:
    """A new balancer of strategy ``name``, with ``options`` (a ``ValueError`` names any
    that strategy does not take). A prefix-aware balancer's fallback is resource-aware,
    built from the resource options among ``options``."""
    # Counts are whole numbers, whatever type the config gave them.
    options = {k: int(v) if k in COUNTS else v for k, v in (options or {}).items()}
    allowed = AWARE.get(name)
    if allowed is None:
        raise ValueError(f"unknown strategy {name!r} (known: {', '.join(sorted(AWARE))})")
    stray = sorted(set(options) - allowed)
    if stray:
        raise ValueError(f"{', '.join(stray)}: not an option of strategy {name}")
    resource = ResourceAware(**{k: v for k, v in options.items() if k in RESOURCE_OPTIONS})
    if name == "resource_aware":
        return resource
    return PrefixAware(
        resource,
        index=PrefixIndex(options.get("index_blocks", 100_000)),
        **{k: v for k, v in options.items() if k in PREFIX_OPTIONS - {"index_blocks"}},
    )


def facts_for(
    balancer: Balancer, model: str, stream: bool, payload: Mapping[str, Any]
) -> RoutingFacts:
    # One isinstance test on the hot path; the prompt is read only past it.
    if isinstance(balancer, PrefixAware):
        return balancer.facts(model, stream, payload)
    return RoutingFacts(model, stream)
