"""Waiting for a slot of a saturated model, through the request path on the memory transport:
order by tier and key, bounds with 503 + Retry-After, departures, shares, metrics, and a
deployment whose own queue (as scraped) holds it full."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from swarmgate.config import Scrape, parse_settings
from swarmgate.observability.metrics import Metrics
from swarmgate.pipeline.exchange import Exchange
from swarmgate.pipeline.queueing import Queueing
from swarmgate.pipeline.request import ROUTES
from swarmgate.routing.balancers import RoutingFacts
from swarmgate.routing.fleet import Fleet, Lease
from swarmgate.routing.plan import Router
from swarmgate.routing.scrape import Scraper
from swarmgate.types import Principal, Role
from swarmgate.upstream.exposition import MemoryExpositions
from swarmgate.upstream.memory import MemoryResponse, SentRequest
from tests.pipeline.fleets import USER, Answer, Gateway

COMPLETION = {
    "id": "c1",
    "object": "chat.completion",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "yo"}}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
}
A = "http://a.test:8000"


class Upstream:
    """A model server that answers each request only when the test lets it go, and records
    the order requests reached it (by their ``user`` field)."""

    def __init__(self) -> None:
        self.arrived: list[str] = []
        self.gates: dict[str, asyncio.Event] = {}

    async def __call__(self, request: SentRequest) -> MemoryResponse:
        name = str(request.json()["user"])  # type: ignore[index]
        self.arrived.append(name)
        gate = self.gates.setdefault(name, asyncio.Event())
        await gate.wait()
        return MemoryResponse.json(COMPLETION)

    def finish(self, name: str) -> None:
        self.gates.setdefault(name, asyncio.Event()).set()


def chat(gw: Gateway, name: str, tier: str, key: str, **post: Any) -> asyncio.Task[Answer]:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "user": name}
    headers = [(b"authorization", f"Tier {tier}:{key}".encode())]
    return asyncio.create_task(gw.post(body, headers=headers, **post))


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def serve_one_by_one(gw: Gateway, up: Upstream, first: str, count: int) -> list[str]:
    """Finish the request holding the slot, then each one the slot passes to, in turn."""
    current = first
    for _ in range(count):
        up.finish(current)
        await settle()
        current = up.arrived[-1]
    up.finish(current)
    return up.arrived[1:]


async def test_a_released_slot_goes_to_the_highest_tier_then_round_robin_between_keys() -> None:
    up = Upstream()
    # The shipped free tier's own limits (2 concurrent per key) would refuse a3 at admission.
    limits = {"tiers": {"free": {"priority": 0}}}
    gw = Gateway(up, A, deployment={"max_concurrent": 1}, queue_timeout=5, limits=limits)
    tasks = [chat(gw, "holder", "free", "h")]
    await settle()
    for name, tier, key in [
        ("a1", "free", "a"),
        ("a2", "free", "a"),
        ("a3", "free", "a"),
        ("b1", "free", "b"),
        ("p1", "pro", "p"),
        ("c1", "default", "c"),  # the same priority as free: one round robin
        ("e1", "enterprise", "e"),
        ("x1", "unknown-tier", "x"),  # counted as default
    ]:
        tasks.append(chat(gw, name, tier, key))
        await settle()
    assert up.arrived == ["holder"]  # all of them wait
    order = await serve_one_by_one(gw, up, "holder", 8)
    assert order == ["e1", "p1", "a1", "b1", "c1", "x1", "a2", "a3"]
    assert {(await t).status for t in tasks} == {200}
    assert gw.in_flight() == [0]


async def test_a_full_tier_line_is_refused_at_once_with_retry_after() -> None:
    up = Upstream()
    limits = {"queue": {"free": {"max_length": 1, "max_wait": 3}}}
    gw = Gateway(up, A, deployment={"max_concurrent": 1}, queue_timeout=5, limits=limits)
    holder = chat(gw, "holder", "pro", "h")
    waiting = chat(gw, "f1", "free", "f")
    await settle()
    refused = await asyncio.wait_for(chat(gw, "f2", "free", "g"), 1)
    assert refused.status == 503
    assert refused.headers[b"retry-after"] == b"3"
    error = refused.json()["error"]
    assert error["code"] == "no_deployment_available" and error["type"] == "api_error"
    assert "1 free-tier requests wait" in error["message"]
    pro = chat(gw, "p1", "pro", "p")  # another tier's line has room: it waits
    await settle()
    assert not pro.done()
    assert gw.sample("gateway_queue_rejected_total", model="m", tier="free", reason="full") == 1
    assert gw.sample("gateway_queue_length", model="m", tier="free") == 1
    assert await serve_one_by_one(gw, up, "holder", 2) == ["p1", "f1"]
    assert [(await t).status for t in (holder, waiting, pro)] == [200, 200, 200]
    assert gw.sample("gateway_queue_length", model="m", tier="free") == 0
    assert gw.sample("gateway_queue_wait_seconds_count", tier="free") == 1


async def test_waiting_past_max_wait_is_refused_with_retry_after() -> None:
    up = Upstream()
    limits = {"queue": {"free": {"max_wait": 0.2}}}
    gw = Gateway(up, A, deployment={"max_concurrent": 1}, queue_timeout=5, limits=limits)
    holder = chat(gw, "holder", "enterprise", "h")
    await settle()
    started = asyncio.get_running_loop().time()
    refused = await asyncio.wait_for(chat(gw, "f1", "free", "f"), 2)
    waited = asyncio.get_running_loop().time() - started
    assert refused.status == 503 and refused.headers[b"retry-after"] == b"1"
    assert 0.15 < waited < 1.0
    assert "no slot freed within 0.2 s" in refused.json()["error"]["message"]
    assert gw.sample("gateway_queue_rejected_total", model="m", tier="free", reason="timeout") == 1
    assert gw.sample("gateway_queue_wait_seconds_sum", tier="free") == pytest.approx(0.2, abs=0.1)
    up.finish("holder")
    assert (await holder).status == 200
    assert gw.in_flight() == [0]


async def test_a_client_that_leaves_while_waiting_leaves_the_line() -> None:
    up = Upstream()
    gw = Gateway(up, A, deployment={"max_concurrent": 1}, queue_timeout=5)
    holder = chat(gw, "holder", "free", "h")
    gone = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await gone.wait()
        return {"type": "http.disconnect"}

    leaver = chat(gw, "leaver", "enterprise", "l", receive=receive)
    stayer = chat(gw, "stayer", "free", "s")
    await settle()
    assert gw.fleet.resolve("m").queue.waiting == 2
    gone.set()
    await settle()
    assert leaver.done() and gw.fleet.resolve("m").queue.waiting == 1
    assert (
        gw.sample(
            "gateway_requests_total", method="POST", endpoint="/v1/chat/completions", status="499"
        )
        == 1
    )
    assert gw.sample("gateway_queue_wait_seconds_count", tier="enterprise") == 1
    assert gw.sample("gateway_queue_length", model="m", tier="enterprise") == 0
    assert await serve_one_by_one(gw, up, "holder", 1) == ["stayer"]
    assert (await stayer).status == 200 and (await holder).status == 200
    assert gw.in_flight() == [0]


async def test_a_slot_handed_to_a_request_cancelled_at_that_moment_passes_on() -> None:
    settings = parse_settings(
        {"models": {"m": {"queue_timeout": 5, "deployments": [{"url": A, "max_concurrent": 1}]}}},
        {},
    )
    fleet = Fleet(settings)
    queueing = Queueing(settings.limits, Metrics())
    pool = fleet.resolve("m")
    state = pool.members[0]
    holding = state.lease()

    async def never() -> dict[str, Any]:
        await asyncio.Event().wait()
        raise AssertionError

    def waiting(tier: str) -> asyncio.Task[Lease]:
        x = Exchange.start(
            {"type": "http", "headers": [], "path": "/v1/chat/completions"},
            ROUTES["/v1/chat/completions"],
        )
        x.principal = Principal(tier, Role.USER, USER.scopes, tier=tier, key_id=tier)
        plan = Router().plan(pool, RoutingFacts("m", False))
        return asyncio.create_task(queueing.wait(x, plan, never))

    first, second = waiting("enterprise"), waiting("free")
    await settle()
    holding.release()  # handed to the enterprise request ...
    first.cancel()  # ... cancelled before it could run
    assert state.in_flight == 1
    await settle()
    assert first.cancelled()
    lease = await asyncio.wait_for(second, 1)  # the slot passed on, still counted once
    assert state.in_flight == 1 and pool.queue.waiting == 0
    lease.release()
    assert state.in_flight == 0


async def test_a_tier_with_a_share_leaves_the_rest_of_the_pool_to_others() -> None:
    up = Upstream()
    limits = {"max_share": {"free": 0.5}}
    gw = Gateway(up, A, deployment={"max_concurrent": 4}, queue_timeout=5, limits=limits)
    free = [chat(gw, f"f{i}", "free", f"k{i % 2}") for i in range(4)]
    await settle()
    assert sorted(up.arrived) == ["f0", "f1"]  # half the pool; the other two wait
    assert gw.fleet.resolve("m").queue.lengths["free"] == 2
    pro = [chat(gw, f"p{i}", "pro", "p") for i in range(2)]
    await settle()
    assert sorted(up.arrived[2:]) == ["p0", "p1"]  # at once, with the slots kept free
    up.finish("f0")
    await settle()
    assert up.arrived[4:] == ["f2"]  # free gave one back: its next waiter takes it
    up.finish("p0")
    await settle()
    assert up.arrived[4:] == ["f2"]  # a pro slot freed: free still holds its share
    for name in ["f1", "f2", "p1"]:
        up.finish(name)
        await settle()
    up.finish("f3")
    assert {(await t).status for t in free + pro} == {200}
    assert gw.in_flight() == [0]
    assert gw.fleet.resolve("m").queue.held == {"free": 0}


async def test_a_model_with_room_never_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    async def ok(request: SentRequest) -> MemoryResponse:
        return MemoryResponse.json(COMPLETION)

    async def must_not_wait(*args: Any) -> None:
        raise AssertionError("waited although the model had room")

    gw = Gateway(ok, A, deployment={"max_concurrent": 2}, queue_timeout=5)
    monkeypatch.setattr(Queueing, "wait", must_not_wait)
    monkeypatch.setattr(Queueing, "first_lease", must_not_wait)
    monkeypatch.setattr(Queueing, "capped_tier", must_not_wait)
    answers = await asyncio.gather(*(chat(gw, f"r{i}", "free", "k") for i in range(2)))
    assert {a.status for a in answers} == {200}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def queued(waiting: int) -> str:
    return f"vllm:num_requests_waiting {waiting}\nvllm:num_requests_running 8\n"


async def test_a_deployment_full_by_its_own_queue_holds_requests_until_a_scrape_frees_it() -> None:
    up = Upstream()
    limits = {"tiers": {"free": {"priority": 0}}, "queue": {"pro": {"max_wait": 0.2}}}
    gw = Gateway(
        up,
        A,
        deployment={"max_concurrent": 1},
        queue_timeout=30,
        max_waiting=2,
        limits=limits,
        scrape={"interval": 1, "stale_after": 10},
    )
    page = A + "/metrics"
    scraper = Scraper(gw.fleet, MemoryExpositions({page: queued(5)}), Scrape(), Clock())
    await scraper.scrape()  # other clients filled its queue: 5 wait there
    free = chat(gw, "f1", "free", "f")
    enterprise = chat(gw, "e1", "enterprise", "e")
    await settle()
    # None of ours is in flight (below max_concurrent), yet they wait: the server is full.
    assert up.arrived == [] and gw.in_flight() == [0]
    assert gw.fleet.resolve("m").queue.waiting == 2
    refused = await asyncio.wait_for(chat(gw, "p1", "pro", "p"), 2)
    assert refused.status == 503 and refused.headers[b"retry-after"] == b"1"
    assert "no slot freed within 0.2 s" in refused.json()["error"]["message"]

    # Its queue drained: the scrape hands the slot over (no lease ended that would have),
    # to the highest tier first; the free request gets it when the enterprise one is done.
    scraper.expositions.pages[page] = queued(1)  # type: ignore[attr-defined]
    await scraper.scrape()
    await settle()
    assert up.arrived == ["e1"]
    up.finish("e1")
    await settle()
    assert up.arrived == ["e1", "f1"]
    up.finish("f1")
    assert [(await t).status for t in (enterprise, free)] == [200, 200]
    assert gw.in_flight() == [0]

    # Full again, then the server stops answering its scrape: once its last figures are
    # stale_after old they no longer count, and the waiter goes ahead.
    scraper.expositions.pages[page] = queued(9)  # type: ignore[attr-defined]
    await scraper.scrape()
    late = chat(gw, "f2", "free", "f")
    await settle()
    assert not late.done() and up.arrived == ["e1", "f1"]
    del scraper.expositions.pages[page]  # type: ignore[attr-defined]
    scraper.clock.now += 9  # type: ignore[attr-defined]
    await scraper.scrape()
    await settle()
    assert up.arrived == ["e1", "f1"]  # 9 s old: still counts
    scraper.clock.now += 1  # type: ignore[attr-defined]
    scraper.assess()
    await settle()
    assert up.arrived == ["e1", "f1", "f2"]
    up.finish("f2")
    assert (await late).status == 200
    assert gw.in_flight() == [0]
