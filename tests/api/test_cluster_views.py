"""The status documents: a deployment's circuit and why it is down always appear; the queue
and cache figures scraped from its /metrics appear once it has been scraped."""

from __future__ import annotations

from typing import Any

from swarmgate.api.cluster import worker_view
from swarmgate.config import parse_settings
from swarmgate.routing.fleet import Fleet
from swarmgate.routing.load import Load
from swarmgate.types import Outcome


def _state() -> Any:
    settings = parse_settings({"models": {"m": {"deployments": [{"url": "http://h:1"}]}}}, {})
    return Fleet(settings).resolve("m").members[0]


def test_a_fresh_state_shows_its_load_and_a_closed_circuit() -> None:
    view = worker_view(_state(), "config")
    assert view["id"] == "m@h:1"
    assert (view["status"], view["in_flight"], view["max_concurrent"]) == ("healthy", 0, 100)
    assert (view["circuit"], view["down_reason"]) == ("closed", None)
    assert not {"queue_waiting", "kv_cache_usage"} & view.keys()  # never scraped


def test_an_open_circuit_and_scraped_figures_are_shown() -> None:
    state = _state()
    for _ in range(state.health.breaker.threshold):
        state.health.observe(Outcome.SERVER_ERROR)
    state.load = Load(at=0.0, waiting=3, running=2, kv_usage=0.5)
    state.draining = True
    view = worker_view(state, "api")
    assert view["status"] == "draining"
    assert view["circuit"] == "open" and "circuit" in str(view["down_reason"])
    assert (view["queue_waiting"], view["queue_running"], view["kv_cache_usage"]) == (3, 2, 0.5)
