"""The aware balancers by name, and through the request path: the prompt is hashed only for a
prefix-aware pool, and a placement is recorded only for a request its deployment answered."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from swarmgate.config import parse_settings
from swarmgate.errors import ConfigError, UpstreamUnreachable
from swarmgate.routing.aware import aware_balancer, facts_for
from swarmgate.routing.balancers import RoutingFacts, WeightedRoundRobin
from swarmgate.routing.fleet import Fleet
from swarmgate.routing.load import Load
from swarmgate.routing.plan import Plan
from swarmgate.routing.prefix import PrefixAware, PromptFacts
from swarmgate.routing.resource import ResourceAware
from swarmgate.upstream.memory import MemoryResponse, SentRequest
from tests.pipeline.fleets import Gateway

SYSTEM = "You are a careful assistant. Keep to the facts. " * 100
ANSWER = {
    "id": "c",
    "object": "chat.completion",
    "created": 0,
    "model": "m",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
}


def _chat(user: str, system: str = SYSTEM) -> dict[str, Any]:
    return {
        "model": "m",
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
    }


class Untouchable(Mapping[str, Any]):
    def __getitem__(self, key: str) -> Any:
        raise AssertionError("the prompt was read")

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("the prompt was read")

    def __len__(self) -> int:
        return 0

    def get(self, key: str, default: Any = None) -> Any:
        raise AssertionError("the prompt was read")


def test_by_name_with_options() -> None:
    resource = aware_balancer("resource_aware", {"half_life": 1.0})
    assert isinstance(resource, ResourceAware) and resource.half_life == 1.0
    prefix = aware_balancer(
        "prefix_aware", {"load_factor": 2.0, "index_blocks": 10, "stale_after": 3}
    )
    assert isinstance(prefix, PrefixAware)
    assert prefix.load_factor == 2.0 and prefix.index.capacity == 10
    assert isinstance(prefix.fallback, ResourceAware) and prefix.fallback.stale_after == 3
    with pytest.raises(ValueError, match="block_bytes: not an option of strategy resource_aware"):
        aware_balancer("resource_aware", {"block_bytes": 5})
    with pytest.raises(ValueError, match="unknown strategy"):
        aware_balancer("nope")


def test_the_prompt_is_hashed_only_for_a_prefix_aware_pool() -> None:
    for balancer in (WeightedRoundRobin(), aware_balancer("resource_aware")):
        facts = facts_for(balancer, "m", True, Untouchable())
        assert type(facts) is RoutingFacts and (facts.model, facts.stream) == ("m", True)
    facts = facts_for(aware_balancer("prefix_aware"), "m", False, _chat("hi"))
    assert isinstance(facts, PromptFacts) and len(facts.blocks) == len(SYSTEM) // 1024


def _gateway(handler: Any) -> tuple[Gateway, PrefixAware]:
    gw = Gateway(handler, "http://a:1", "http://b:2")
    balancer = aware_balancer("prefix_aware")
    assert isinstance(balancer, PrefixAware)
    gw.fleet.snapshot.pools["m"].balancer = balancer
    return gw, balancer


async def test_through_the_request_path_a_shared_system_prompt_sticks() -> None:
    async def handler(request: SentRequest) -> MemoryResponse:
        return MemoryResponse.json(ANSWER)

    gw, balancer = _gateway(handler)
    for i in range(8):
        assert (await gw.post(_chat(f"question {i}"))).status == 200
    assert len({r.base_url for r in gw.transport.sent}) == 1
    assert len(balancer.index) == len(SYSTEM) // 1024


async def test_a_placement_is_recorded_where_it_was_served_not_where_it_was_tried() -> None:
    async def handler(request: SentRequest) -> MemoryResponse:
        if request.base_url == "http://a:1":
            raise UpstreamUnreachable("down")
        return MemoryResponse.json(ANSWER)

    gw, balancer = _gateway(handler)
    for i in range(4):
        assert (await gw.post(_chat(f"q{i}"))).status == 200
    facts = balancer.facts("m", False, _chat("x"))
    assert set(balancer.index.matches(facts.blocks)) == {"m@b:2"}


async def test_a_refused_request_advertises_no_holder() -> None:
    async def handler(request: SentRequest) -> MemoryResponse:
        return MemoryResponse.json({"error": {"message": "bad"}}, status=400)

    gw, balancer = _gateway(handler)
    assert (await gw.post(_chat("q"))).status == 400
    assert len(balancer.index) == 0


def test_resource_aware_through_a_pools_plan_reads_the_scraped_load() -> None:
    urls = ["http://a:1", "http://b:2"]
    fleet = Fleet(
        parse_settings({"models": {"m": {"deployments": [{"url": u} for u in urls]}}}, {})
    )
    pool = fleet.snapshot.pools["m"]
    pool.balancer = ResourceAware(clock=lambda: 100.0)
    busy, idle = pool.members
    busy.load = Load(100.0, waiting=12, running=8, kv_usage=0.9)  # other clients' work
    idle.load = Load(100.0, waiting=0, running=0, kv_usage=0.0)
    leases = []
    picks = []
    for _ in range(20):
        chosen = Plan(pool, RoutingFacts("m")).next()
        leases.append(chosen.lease())
        picks.append(chosen.name)
    # The idle one takes requests until its own in-flight count matches the busy one's queue.
    assert picks.count("m@b:2") >= 15
    for lease in leases:
        lease.release()
    busy.load = Load(100.0 - 60, waiting=12, running=8, kv_usage=0.9)  # stale: ignored
    assert Plan(pool, RoutingFacts("m")).next().name in {"m@a:1", "m@b:2"}
    assert {Plan(pool, RoutingFacts("m")).next().name for _ in range(50)} == {"m@a:1", "m@b:2"}


def test_the_config_names_the_aware_balancers_and_checks_their_options() -> None:
    def models(balancer: object) -> dict[str, object]:
        return {"models": {"m": {"deployments": [{"url": "http://a:1"}], "balancer": balancer}}}

    prefix = {"strategy": "prefix_aware", "options": {"block_bytes": 512, "index_blocks": 10}}
    pool = Fleet(parse_settings(models(prefix), {})).resolve("m")
    assert isinstance(pool.balancer, PrefixAware) and pool.balancer.block_bytes == 512
    resource = Fleet(parse_settings(models("resource_aware"), {})).resolve("m")
    assert isinstance(resource.balancer, ResourceAware)
    with pytest.raises(ConfigError, match="blok: not options of strategy prefix_aware"):
        parse_settings(models({"strategy": "prefix_aware", "options": {"blok": 5}}), {})
    with pytest.raises(ConfigError, match="it takes none"):
        parse_settings(models({"strategy": "round_robin", "options": {"slack": 5}}), {})
