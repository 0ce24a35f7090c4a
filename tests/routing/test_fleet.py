"""The fleet: frozen deployments, run-time state apart, leases, atomic replacement."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from swarmgate.config import parse_settings
from swarmgate.errors import DeploymentsDraining, ModelNotFound, NoDeployment
from swarmgate.limits.queue import TierPolicy
from swarmgate.routing.balancers import LeastOutstanding, RoutingFacts
from swarmgate.routing.fleet import Fleet
from swarmgate.routing.load import Load
from swarmgate.routing.plan import Plan
from swarmgate.routing.resource import ResourceAware


def _settings(models: dict[str, Any], **extra: Any) -> Any:
    return parse_settings({"models": models, **extra}, {})


def _fleet(*urls: str, **model: Any) -> Fleet:
    return Fleet(_settings({"m": {"deployments": [{"url": u} for u in urls], **model}}))


def test_names_aliases_and_the_default_model_resolve() -> None:
    fleet = Fleet(
        _settings(
            {
                "m": {"aliases": ["gpt-4"], "deployments": [{"url": "http://h:1"}] * 2},
                "e": {"type": "embedding", "deployments": [{"url": "https://e", "name": "emb"}]},
            },
            default_model="gpt-4",
        )
    )
    pool = fleet.resolve("gpt-4")
    assert pool is fleet.resolve("m") is fleet.resolve(None)
    assert [s.name for s in pool.members] == ["m@h:1#0", "m@h:1#1"]
    assert [s.name for s in fleet.resolve("e").members] == ["emb"]
    with pytest.raises(ModelNotFound, match=r"Available models: e$"):
        fleet.resolve("x", visible=lambda m: m == "e")


def test_a_lease_holds_one_slot_and_releases_once() -> None:
    state = _fleet("http://h:1").resolve("m").members[0]
    lease = state.lease()
    assert state.in_flight == 1
    lease.release()
    lease.release()
    assert state.in_flight == 0


def test_a_replacement_keeps_the_state_of_deployments_that_stay() -> None:
    fleet = _fleet("http://a:1", "http://b:1")
    a, b = fleet.resolve("m").members
    held = a.lease()
    fleet.replace(
        _settings(
            {"m": {"deployments": [{"url": "http://a:1", "weight": 3}, {"url": "http://c:1"}]}}
        )
    )
    kept, added = fleet.resolve("m").members
    assert kept is a and kept.in_flight == 1 and kept.weight == 3  # new settings, same state
    assert added is not b and added.in_flight == 0
    held.release()
    assert kept.in_flight == 0


def test_a_plan_skips_busy_and_tried_deployments_and_bounds_retries() -> None:
    pool = _fleet("http://a:1", "http://b:1", "http://c:1").resolve("m")
    first, second, third = pool.members
    leases = [second.lease() for _ in range(second.max_concurrent)]  # b is full
    plan = Plan(pool, RoutingFacts("m"), max_attempts=2)
    picked = [plan.next()]
    assert plan.may_retry()
    picked.append(plan.next())
    assert not plan.may_retry()
    assert second not in picked and set(picked) == {first, third}
    with pytest.raises(NoDeployment, match="3 configured"):
        plan.next()
    for lease in leases:
        lease.release()


async def test_the_slot_queue_is_the_pools_and_survives_a_replacement() -> None:
    a = {"url": "http://a:1", "max_concurrent": 2}
    fleet = Fleet(_settings({"m": {"deployments": [a]}}))
    pool = fleet.resolve("m")
    queue = pool.queue
    assert pool.capacity == queue.capacity == 2
    held = pool.members[0].lease()
    waiter = queue.enter(
        TierPolicy("free", 10), "k", 5, asyncio.get_running_loop().create_future(), 0
    )
    assert waiter is not None
    fleet.replace(
        _settings({"m": {"deployments": [a, {"url": "http://b:1", "max_concurrent": 3}]}})
    )
    new = fleet.resolve("m")
    assert new.queue is queue and all(m.queue is queue for m in new.members)
    assert queue.capacity == 5 and queue.waiting == 1
    held.release()  # handed over to the waiter that queued before the replacement
    assert waiter.future.result() is new.members[0]
    assert new.members[0].in_flight == 1


@pytest.mark.parametrize("strategy", ["least_outstanding", "power_of_two"])
def test_a_burst_through_plans_and_held_leases_is_spread_by_the_configured_balancer(
    strategy: str,
) -> None:
    urls = [f"http://d{i}:1" for i in range(4)]
    pool = _fleet(*urls, balancer=strategy).resolve("m")
    held = [Plan(pool, RoutingFacts("m")).next().lease() for _ in range(200)]
    assert all(50 - 4 <= m.in_flight <= 50 + 4 for m in pool.members), [
        m.in_flight for m in pool.members
    ]
    for lease in held:
        lease.release()


def test_a_model_without_a_balancer_setting_balances_by_least_outstanding() -> None:
    pool = _fleet("http://a:1", "http://b:1").resolve("m")
    busy = pool.members[0].lease()
    assert {Plan(pool, RoutingFacts("m")).next().name for _ in range(5)} == {"m@b:1"}
    busy.release()


def test_with_scraping_a_model_without_a_balancer_setting_is_resource_aware() -> None:
    def models(*deployments: dict[str, Any]) -> dict[str, Any]:
        return {"m": {"deployments": list(deployments)}}

    scrape = {"interval": 1}
    fleet = Fleet(_settings(models({"url": "http://a:1"}, {"url": "http://b:1"}), scrape=scrape))
    pool = fleet.resolve("m")
    assert isinstance(pool.balancer, ResourceAware) and pool.strategy == "resource_aware"
    # Used as such: a fresh scrape of other clients' work on a steers requests to b.
    busy, _ = pool.members
    busy.load = Load(time.monotonic(), waiting=6, running=2)
    assert {Plan(pool, RoutingFacts("m")).next().name for _ in range(20)} == {"m@b:1"}
    # Decided again when the pools are rebuilt: a deployment added unscraped turns it back.
    fleet.replace(
        _settings(
            models({"url": "http://a:1"}, {"url": "http://c:1", "metrics_path": None}),
            scrape=scrape,
        )
    )
    pool = fleet.resolve("m")
    assert isinstance(pool.balancer, LeastOutstanding) and pool.strategy == "least_outstanding"
    named = {"m": {"deployments": [{"url": "http://a:1"}], "balancer": "round_robin"}}
    assert Fleet(_settings(named, scrape=scrape)).resolve("m").strategy == "round_robin"


def test_a_model_whose_deployments_are_all_draining_says_so() -> None:
    settings = parse_settings(
        {"models": {"m": {"deployments": [{"url": "http://a:1"}, {"url": "http://b:1"}]}}}, {}
    )
    pool = Fleet(settings).resolve("m")
    pool.members[0].draining = True
    assert Plan(pool, RoutingFacts("m")).next() is pool.members[1]  # the other still serves
    pool.members[1].draining = True
    with pytest.raises(DeploymentsDraining, match="every deployment of model 'm' is draining"):
        Plan(pool, RoutingFacts("m")).next()
    pool.members[0].draining = False
    pool.members[0].in_flight = pool.members[0].max_concurrent  # busy, not draining
    with pytest.raises(NoDeployment) as busy:
        Plan(pool, RoutingFacts("m")).next()
    assert not isinstance(busy.value, DeploymentsDraining)
