"""The fleet watch: probes on their intervals, verdicts into health, the outlier sweep."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from swarmgate.config import parse_settings
from swarmgate.errors import UpstreamUnreachable
from swarmgate.routing.fleet import Fleet
from swarmgate.routing.watch import FleetWatch
from swarmgate.types import Outcome
from swarmgate.upstream.memory import MemoryResponse, MemoryTransport, SentRequest


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def _unused(request: SentRequest) -> MemoryResponse:
    raise AssertionError("no inference request in these tests")


def _fleet(**model: Any) -> Fleet:
    deployments = [
        {"url": "http://a:1", "name": "a", "api_key_env": "K"},
        {"url": "http://b:1", "name": "b"},
    ]
    return Fleet(
        parse_settings({"models": {"m": {"deployments": deployments, **model}}}, {"K": "sk-up"})
    )


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_probes_follow_their_intervals_and_mark_a_deployment_down_and_up() -> None:
    clock = Clock()
    fleet = _fleet(
        health_check={
            "path": "/v1/models",
            "interval": 10,
            "unhealthy_interval": 2,
            "timeout": 1,
            "unhealthy_threshold": 2,
            "healthy_threshold": 2,
        }
    )
    transport = MemoryTransport(_unused)
    a_up = [False]

    async def probe(request: SentRequest) -> MemoryResponse:
        if request.base_url == "http://a:1" and not a_up[0]:
            raise UpstreamUnreachable("refused")
        return MemoryResponse.json({"data": []})

    transport.probe_handler = probe
    watch = FleetWatch(fleet, transport, clock, random.Random(0))
    a, b = fleet.resolve("m").members
    watch.tick()  # the first probes are spread over the first interval
    assert transport.probes == []
    for _ in range(3):
        clock.now += 10
        watch.tick()
        await _settle()
    assert not a.health.probe_up and b.health.probe_up
    sent = [p for p in transport.probes if p.base_url == "http://a:1"]
    assert sent[0].path == "/v1/models"
    assert sent[0].headers == {"authorization": "Bearer sk-up"}  # the deployment's own key
    a_up[0] = True
    for _ in range(2):  # probed every unhealthy_interval while down: back within 10 s
        clock.now += 2
        watch.tick()
        await _settle()
    assert a.health.probe_up and a.health.routable


async def test_a_probe_that_hangs_fails_within_its_timeout() -> None:
    fleet = _fleet(health_check={"timeout": 0.05, "unhealthy_threshold": 1})
    transport = MemoryTransport(_unused)

    async def hangs(request: SentRequest) -> MemoryResponse:
        await asyncio.sleep(30)
        raise AssertionError("should have timed out")

    transport.probe_handler = hangs
    watch = FleetWatch(fleet, transport)
    a = fleet.resolve("m").members[0]
    await asyncio.wait_for(watch.probe(a), 1)
    assert not a.health.probe_up and a.health.probes_failed == 1


async def test_a_5xx_fails_a_probe_and_a_4xx_only_when_a_2xx_is_expected() -> None:
    status = [503]

    async def answers(request: SentRequest) -> MemoryResponse:
        return MemoryResponse.json({}, status=status[0])

    for expect_2xx, code, up in (
        (False, 503, False),  # loading, or broken
        (False, 404, True),  # no such path, but the server answers
        (True, 404, False),
        (True, 204, True),
    ):
        fleet = _fleet(health_check={"unhealthy_threshold": 1, "expect_2xx": expect_2xx})
        transport = MemoryTransport(_unused)
        transport.probe_handler = answers
        status[0] = code
        a = fleet.resolve("m").members[0]
        await FleetWatch(fleet, transport).probe(a)
        assert a.health.probe_up is up, (expect_2xx, code)


async def test_disabled_probes_send_nothing() -> None:
    clock = Clock()
    fleet = _fleet(health_check={"enabled": False})
    transport = MemoryTransport(_unused)
    watch = FleetWatch(fleet, transport, clock)
    for _ in range(5):
        clock.now += 60
        watch.tick()
        await _settle()
    assert transport.probes == []


async def test_the_sweep_runs_every_outlier_interval() -> None:
    clock = Clock()
    fleet = _fleet(outlier_detection={"interval": 5, "min_requests": 4, "failure_rate": 0.5})
    a, b = fleet.resolve("m").members
    for h in (a.health, b.health):
        h.clock = clock
    watch = FleetWatch(fleet, MemoryTransport(_unused), clock)
    watch.tick()
    for _ in range(4):
        a.observe(Outcome.SERVER_ERROR)
        a.observe(Outcome.OK)
        b.observe(Outcome.OK)
    clock.now += 4.9
    watch.tick()
    assert a.health.routable
    clock.now += 0.1
    watch.tick()
    assert not a.health.routable and b.health.routable and a.health.times_ejected == 1


async def test_start_and_stop_leave_no_task_behind() -> None:
    fleet = _fleet()
    watch = FleetWatch(fleet, MemoryTransport(_unused))
    watch.start()
    await asyncio.sleep(0.01)
    await watch.stop()
    names = {t.get_name() for t in asyncio.all_tasks()}
    assert "fleet-watch" not in names


async def test_a_bug_in_a_probe_is_logged_and_no_verdict(caplog: pytest.LogCaptureFixture) -> None:
    fleet = _fleet(health_check={"unhealthy_threshold": 1})
    transport = MemoryTransport(_unused)

    async def buggy(request: SentRequest) -> MemoryResponse:
        raise KeyError("oops")

    transport.probe_handler = buggy
    a = fleet.resolve("m").members[0]
    await FleetWatch(fleet, transport).probe(a)
    assert a.health.probe_up and a.health.probes_failed == 0
    assert "health probe of a failed" in caplog.text
