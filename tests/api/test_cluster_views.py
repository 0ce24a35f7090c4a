"""The status documents: figures other parts of the gateway attach to a deployment's state
(its circuit, the queue and cache use scraped from its /metrics) appear when present."""

from __future__ import annotations

import enum
from types import SimpleNamespace
from typing import Any

from swarmgate.api.cluster import worker_view
from swarmgate.config import parse_settings
from swarmgate.routing.fleet import Fleet


class Circuit(enum.Enum):
    OPEN = "open"


def _state() -> Any:
    settings = parse_settings({"models": {"m": {"deployments": [{"url": "http://h:1"}]}}}, {})
    return Fleet(settings).resolve("m").members[0]


def test_a_bare_state_shows_its_load_and_nothing_it_lacks() -> None:
    view = worker_view(_state(), "config")
    assert view["id"] == "m@h:1"
    assert (view["status"], view["in_flight"], view["max_concurrent"]) == ("healthy", 0, 100)
    assert not {"circuit", "down_reason", "queue_waiting", "kv_cache_usage"} & view.keys()


def test_circuit_and_scraped_figures_are_shown_when_attached() -> None:
    state = _state()
    health = SimpleNamespace(
        circuit=lambda now: Circuit.OPEN, clock=lambda: 0.0, why_down=lambda: "circuit open"
    )
    scraped = SimpleNamespace(num_requests_waiting=3, running=2, kv_cache_usage_perc=0.5)
    richer = SimpleNamespace(
        deployment=state.deployment,
        draining=True,
        healthy=False,
        in_flight=1,
        health=health,
        scraped=scraped,
    )
    view = worker_view(richer, "api")  # type: ignore[arg-type]
    assert view["status"] == "draining"
    assert (view["circuit"], view["down_reason"]) == ("open", "circuit open")
    assert (view["queue_waiting"], view["queue_running"], view["kv_cache_usage"]) == (3, 2, 0.5)
