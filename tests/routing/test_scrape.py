"""The scraper: one assignment per deployment per round; figures age out when a server goes
quiet; the request path never waits on it; a queue at ``max_waiting`` holds a deployment full
while its figures are fresh."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from swarmgate.config import Scrape, parse_settings
from swarmgate.errors import NoDeployment
from swarmgate.observability.metrics import Metrics
from swarmgate.routing.balancers import RoutingFacts
from swarmgate.routing.fleet import Fleet
from swarmgate.routing.load import Load
from swarmgate.routing.plan import Router
from swarmgate.routing.scrape import Scraper
from swarmgate.routing.watch import health_rows
from swarmgate.upstream.exposition import MemoryExpositions

PAGE = "vllm:num_requests_waiting 3\nvllm:num_requests_running 5\nvllm:kv_cache_usage_perc 0.5\n"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _fleet(*deployments: dict[str, Any]) -> Fleet:
    return Fleet(parse_settings({"models": {"m": {"deployments": list(deployments)}}}, {}))


def _scrape_config(**config: Any) -> Scrape:
    settings = parse_settings(
        {"models": {"m": {"deployments": [{"url": "http://x:1"}]}}, "scrape": config}, {}
    )
    return settings.scrape


def _scraper(fleet: Fleet, pages: dict[str, str | None], **config: Any) -> Scraper:
    return Scraper(fleet, MemoryExpositions(pages), _scrape_config(**config), Clock())


def test_each_deployment_is_read_at_its_metrics_path() -> None:
    fleet = _fleet(
        {"url": "http://a:1"},
        {"url": "http://b:2", "metrics_path": "/m"},
        {"url": "http://c:3", "metrics_path": None},
    )
    scraper = _scraper(
        fleet, {"http://a:1/metrics": PAGE, "http://b:2/m": "sglang:num_queue_reqs 1\n"}
    )
    assert asyncio.run(scraper.scrape()) == 2
    a, b, c = fleet.snapshot.pools["m"].members
    assert a.load == Load(100.0, waiting=3, running=5, kv_usage=0.5)
    assert b.load == Load(100.0, waiting=1, running=0, kv_usage=None)
    assert c.load is None
    assert sorted(scraper.expositions.requested) == ["http://a:1/metrics", "http://b:2/m"]  # type: ignore[attr-defined]


def test_a_quiet_server_keeps_its_figures_until_they_are_stale_then_has_none(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fleet = _fleet({"url": "http://a:1"})
    scraper = _scraper(fleet, {"http://a:1/metrics": PAGE}, stale_after=10)
    clock = scraper.clock
    assert isinstance(clock, Clock)
    (state,) = fleet.snapshot.pools["m"].members
    asyncio.run(scraper.scrape())
    first = state.load
    assert first is not None
    del scraper.expositions.pages["http://a:1/metrics"]  # type: ignore[attr-defined]
    with caplog.at_level(logging.WARNING, "swarmgate.scrape"):
        clock.now += 9.9
        assert asyncio.run(scraper.scrape()) == 0
        assert state.load is first
        clock.now += 0.1
        asyncio.run(scraper.scrape())
        assert state.load is None
    assert len(caplog.records) == 1  # one warning per outage, not one per round


def test_the_scraped_figures_are_gateway_metrics_while_they_last() -> None:
    fleet = _fleet({"url": "http://a:1"}, {"url": "http://b:2"})
    page = "llamacpp:requests_processing 2\nllamacpp:requests_deferred 6\n"
    scraper = _scraper(fleet, {"http://a:1/metrics": PAGE, "http://b:2/metrics": page})
    metrics = Metrics()
    metrics.follow_fleet(health_rows(fleet))

    def sample(name: str, deployment: str) -> float | None:
        metrics.flush()  # as a scrape of the gateway does
        labels = {"model": "m", "deployment": deployment}
        return metrics.registry.get_sample_value(f"gateway_deployment_{name}", labels)

    assert sample("requests_waiting", "m@a:1") is None  # nothing read yet
    asyncio.run(scraper.scrape())
    assert (sample("requests_waiting", "m@a:1"), sample("requests_running", "m@a:1")) == (3, 5)
    assert sample("kv_cache_usage", "m@a:1") == 0.5
    assert (sample("requests_waiting", "m@b:2"), sample("requests_running", "m@b:2")) == (6, 2)
    assert sample("kv_cache_usage", "m@b:2") is None  # llama.cpp exports none
    # Dropped by the scraper (stale): gone from the metrics too, not left at its last value.
    del scraper.expositions.pages["http://a:1/metrics"]  # type: ignore[attr-defined]
    scraper.clock.now += 10  # type: ignore[attr-defined]
    asyncio.run(scraper.scrape())
    assert sample("requests_waiting", "m@a:1") is None
    assert sample("kv_cache_usage", "m@a:1") is None
    assert sample("requests_waiting", "m@b:2") == 6
    # A deployment that left the fleet leaves the metrics with its figures.
    fleet.replace(parse_settings({"models": {"m": {"deployments": [{"url": "http://a:1"}]}}}, {}))
    assert sample("requests_waiting", "m@b:2") is None


def test_a_hung_server_is_bounded_by_the_timeout_and_does_not_hold_the_others() -> None:
    fleet = _fleet({"url": "http://a:1"}, {"url": "http://b:2"})
    scraper = _scraper(
        fleet, {"http://a:1/metrics": None, "http://b:2/metrics": PAGE}, timeout=0.05
    )
    assert asyncio.run(scraper.scrape()) == 1
    a, b = fleet.snapshot.pools["m"].members
    assert a.load is None and b.load is not None


def test_a_page_without_the_figures_is_not_read_as_idle() -> None:
    fleet = _fleet({"url": "http://a:1"})
    scraper = _scraper(fleet, {"http://a:1/metrics": "up 1\n"})
    assert asyncio.run(scraper.scrape()) == 0
    assert fleet.snapshot.pools["m"].members[0].load is None


def test_the_task_runs_only_with_an_interval_and_stops() -> None:
    async def main() -> None:
        fleet = _fleet({"url": "http://a:1"})
        off = _scraper(fleet, {"http://a:1/metrics": PAGE})
        off.start()
        await asyncio.sleep(0.01)
        assert off.expositions.requested == []  # type: ignore[attr-defined]
        on = _scraper(fleet, {"http://a:1/metrics": PAGE}, interval=0.01)
        on.start()
        for _ in range(100):
            await asyncio.sleep(0.01)
            if len(on.expositions.requested) >= 2:  # type: ignore[attr-defined]
                break
        await on.stop()
        assert len(on.expositions.requested) >= 2  # type: ignore[attr-defined]
        assert fleet.snapshot.pools["m"].members[0].load is not None

    asyncio.run(main())


def _queued(waiting: int) -> str:
    return f"vllm:num_requests_waiting {waiting}\nvllm:num_requests_running 4\n"


def _watched(*deployments: dict[str, Any], max_waiting: int = 2, **scrape: Any) -> Fleet:
    """A fleet whose queues are looked at (``max_waiting``, so a scrape interval too)."""
    model = {"max_waiting": max_waiting, "deployments": list(deployments)}
    return Fleet(parse_settings({"models": {"m": model}, "scrape": {"interval": 1, **scrape}}, {}))


def test_a_queue_at_max_waiting_holds_a_deployment_full_until_a_scrape_shows_it_below() -> None:
    fleet = _watched({"url": "http://a:1"}, {"url": "http://b:2", "max_waiting": 10})
    pages: dict[str, str | None] = {
        "http://a:1/metrics": _queued(2),
        "http://b:2/metrics": _queued(5),
    }
    scraper = _scraper(fleet, pages)
    a, b = fleet.snapshot.pools["m"].members
    assert a.has_capacity and b.has_capacity  # nothing read yet: nothing counts
    asyncio.run(scraper.scrape())
    assert (a.queue_full, b.queue_full) == (True, False)  # 2 of 2, 5 of 10
    assert a.in_flight == 0 and not a.has_capacity and b.has_capacity
    plan = Router().plan(fleet.snapshot.pools["m"], RoutingFacts("m", False))
    assert plan.next() is b
    with pytest.raises(NoDeployment):
        plan.next()  # a is not offered although it has no request of ours in flight
    scraper.expositions.pages["http://a:1/metrics"] = _queued(1)  # type: ignore[attr-defined]
    asyncio.run(scraper.scrape())
    assert not a.queue_full and a.has_capacity


def test_figures_holding_a_deployment_full_stop_counting_when_they_turn_stale() -> None:
    fleet = _watched({"url": "http://a:1"})
    scraper = _scraper(fleet, {"http://a:1/metrics": _queued(7)}, stale_after=10)
    (a,) = fleet.snapshot.pools["m"].members
    asyncio.run(scraper.scrape())
    assert a.queue_full and scraper.expiry == 110.0
    del scraper.expositions.pages["http://a:1/metrics"]  # type: ignore[attr-defined]
    scraper.clock.now += 9.9  # type: ignore[attr-defined]
    asyncio.run(scraper.scrape())  # not read: the last figures still count
    assert a.queue_full
    scraper.clock.now += 0.1  # type: ignore[attr-defined]
    scraper.assess()  # between rounds, at the expiry
    assert not a.queue_full and scraper.expiry is None


def test_the_scraper_decides_again_when_figures_expire_between_rounds() -> None:
    async def main() -> None:
        fleet = _watched({"url": "http://a:1"}, interval=30, stale_after=0.2)
        expositions = MemoryExpositions({"http://a:1/metrics": _queued(3)})
        scraper = Scraper(fleet, expositions, _scrape_config(interval=30, stale_after=0.2))
        (a,) = fleet.snapshot.pools["m"].members
        scraper.start()
        try:
            for _ in range(300):
                await asyncio.sleep(0.01)
                if a.queue_full:
                    break
            assert a.queue_full
            for _ in range(500):  # the next round is 30 s away: only the expiry can end it
                await asyncio.sleep(0.01)
                if not a.queue_full:
                    break
            assert not a.queue_full
            assert expositions.requested == ["http://a:1/metrics"]  # one round, no more
        finally:
            await scraper.stop()

    asyncio.run(main())


def test_a_deployment_held_full_by_its_queue_is_a_gateway_metric() -> None:
    models = {
        "m": {
            "max_waiting": 2,
            "deployments": [{"url": "http://a:1"}, {"url": "http://b:2", "max_waiting": 9}],
        },
        "n": {"deployments": [{"url": "http://c:3"}]},
    }
    fleet = Fleet(parse_settings({"models": models, "scrape": {"interval": 1}}, {}))
    pages: dict[str, str | None] = {
        "http://a:1/metrics": _queued(3),
        "http://b:2/metrics": _queued(3),
        "http://c:3/metrics": _queued(30),
    }
    scraper = _scraper(fleet, pages)
    metrics = Metrics()
    metrics.follow_fleet(health_rows(fleet))

    def full(model: str, deployment: str) -> float | None:
        metrics.flush()
        labels = {"model": model, "deployment": deployment}
        return metrics.registry.get_sample_value("gateway_deployment_queue_full", labels)

    asyncio.run(scraper.scrape())
    assert (full("m", "m@a:1"), full("m", "m@b:2")) == (1.0, 0.0)
    assert full("n", "n@c:3") is None  # no max_waiting: its queue is not looked at
    scraper.expositions.pages["http://a:1/metrics"] = _queued(0)  # type: ignore[attr-defined]
    asyncio.run(scraper.scrape())
    assert full("m", "m@a:1") == 0.0
