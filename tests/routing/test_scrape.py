"""The scraper: one assignment per deployment per round; figures age out when a server goes
quiet; the request path never waits on it."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from swarmgate.config import parse_settings
from swarmgate.observability.metrics import Metrics
from swarmgate.routing.fleet import Fleet
from swarmgate.routing.load import Load
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


def _scraper(fleet: Fleet, pages: dict[str, str | None], **config: Any) -> Scraper:
    settings = parse_settings(
        {"models": {"m": {"deployments": [{"url": "http://x:1"}]}}, "scrape": config}, {}
    )
    return Scraper(fleet, MemoryExpositions(pages), settings.scrape, Clock())


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
