"""Model routing in the inference stage, in process: when fallbacks are tried and when not,
what a transform sends upstream, and the variant's header and metric."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from swarmgate.api.v1 import Inference
from swarmgate.config import parse_settings
from swarmgate.errors import UpstreamUnreachable
from swarmgate.observability.metrics import Metrics
from swarmgate.pipeline.accounting import Accounting
from swarmgate.pipeline.call import Caller
from swarmgate.pipeline.fallback import FallbackCaller
from swarmgate.pipeline.queueing import Queueing
from swarmgate.pipeline.stages import Admission
from swarmgate.routing.fleet import Fleet
from swarmgate.routing.plan import Router
from swarmgate.routing.selection import ModelSelector
from swarmgate.upstream.memory import Handler, MemoryResponse, MemoryTransport, SentRequest
from tests.pipeline.fleets import Answer, LetIn

A, B = "http://a.test:8000", "http://b.test:8000"
COMPLETION = {
    "id": "c1",
    "object": "chat.completion",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "yo"}}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
}
CHAT: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


class Gateway:
    """Models ``m`` (at A, falling back to ``n``) and ``n`` (at B), and ``routing``."""

    def __init__(self, handler: Handler, m: dict[str, Any] | None = None, **routing: Any):
        settings = parse_settings(
            {
                "models": {
                    "m": {"fallbacks": ["n"], "deployments": [{"url": A}], **(m or {})},
                    "n": {"deployments": [{"url": B}]},
                },
                "routing": routing,
            },
            {},
        )
        self.transport = MemoryTransport(handler)
        self.metrics = Metrics()
        fleet, router = Fleet(settings), Router()
        selector = ModelSelector.of(settings)
        assert selector is not None
        caller = Caller(self.transport, Queueing(settings.limits, self.metrics))
        self.inference = Inference(
            LetIn(),
            fleet,
            Admission(settings.limits, metrics=self.metrics),
            router,
            FallbackCaller(caller, selector, fleet, router),
            Accounting(self.metrics),
            1 << 20,
            selector=selector,
        )

    async def post(
        self, body: dict[str, Any], headers: tuple[tuple[bytes, bytes], ...] = ()
    ) -> Answer:
        raw = orjson.dumps(body)
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/v1/chat/completions",
            "headers": [(b"x-request-id", b"rid-1"), *headers],
            "client": ("127.0.0.1", 5000),
        }
        given = False

        async def receive() -> dict[str, Any]:
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": raw}
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

        answer = Answer()
        await self.inference(scope, receive, answer.send)
        return answer

    def sent_to(self) -> list[str]:
        return [s.base_url for s in self.transport.sent]

    def sample(self, name: str, **labels: str) -> float | None:
        self.metrics.flush()
        return self.metrics.registry.get_sample_value(name, labels)


def failing_at_a(response: MemoryResponse | Exception) -> Handler:
    async def handler(request: SentRequest) -> MemoryResponse:
        if request.base_url == A:
            if isinstance(response, Exception):
                raise response
            return response
        return MemoryResponse.json(COMPLETION)

    return handler


async def test_a_5xx_falls_back_to_the_next_model() -> None:
    gw = Gateway(failing_at_a(MemoryResponse.json({"error": "down"}, status=503)))
    answer = await gw.post(CHAT)
    assert answer.status == 200
    assert answer.headers[b"x-swarmgate-model"] == b"n"
    assert gw.sent_to() == [A, B]
    assert orjson.loads(gw.transport.sent[1].body)["model"] == "n"
    assert gw.sample("inference_requests_total", model="n", type="chat") == 1


async def test_an_unreachable_model_falls_back() -> None:
    gw = Gateway(failing_at_a(UpstreamUnreachable("refused")))
    answer = await gw.post(CHAT)
    assert answer.status == 200 and gw.sent_to() == [A, B]


async def test_a_4xx_is_the_clients_answer_not_a_reason_to_fall_back() -> None:
    gw = Gateway(failing_at_a(MemoryResponse.json({"error": {"message": "bad"}}, status=400)))
    answer = await gw.post(CHAT)
    assert answer.status == 400 and gw.sent_to() == [A]


async def test_a_timeout_is_not_retried_on_another_model() -> None:
    async def hangs(request: SentRequest) -> MemoryResponse:
        await asyncio.sleep(30)
        raise AssertionError("the watchdog should have fired")

    timeouts = {"first_byte": 0.05, "idle": 0.05, "total": 0.05}
    gw = Gateway(hangs, m={"deployments": [{"url": A, "timeouts": timeouts}]})
    answer = await gw.post(CHAT)
    assert answer.status == 504 and gw.sent_to() == [A]


async def test_a_busy_model_falls_back_and_the_chain_ends_in_its_error() -> None:
    release = asyncio.Event()

    async def a_hangs_until_released(request: SentRequest) -> MemoryResponse:
        if request.base_url == A:
            await release.wait()
        return MemoryResponse.json(COMPLETION)

    gw = Gateway(a_hangs_until_released, m={"deployments": [{"url": A, "max_concurrent": 1}]})
    first = asyncio.create_task(gw.post(CHAT))
    while not gw.transport.sent:
        await asyncio.sleep(0)
    second = await gw.post(CHAT)
    assert second.status == 200 and second.headers[b"x-swarmgate-model"] == b"n"
    release.set()
    assert (await first).status == 200

    async def all_down(request: SentRequest) -> MemoryResponse:
        return MemoryResponse.json({"error": "down"}, status=500)

    down = Gateway(all_down)
    answer = await down.post(CHAT)
    assert answer.status == 502 and down.sent_to() == [A, B]
    assert "deployment n@b.test:8000" in answer.json()["error"]["message"]


async def test_an_unchanged_body_goes_up_as_sent_and_a_changed_one_edited() -> None:
    async def ok(request: SentRequest) -> MemoryResponse:
        return MemoryResponse.json(COMPLETION)

    transform = {
        "cap_params": {"max_tokens": 10},
        "request_headers": {"X-Team": "t"},
        "remove_request_headers": ["X-Debug"],
        "response_headers": {"X-Edited": "1"},
    }
    gw = Gateway(ok, m={"transform": transform})
    small = {**CHAT, "max_tokens": 5}
    answer = await gw.post(small, ((b"x-debug", b"1"),))
    sent = gw.transport.sent[-1]
    assert sent.body == orjson.dumps(small)  # nothing to cap: the client's bytes
    assert sent.headers["x-team"] == "t" and "x-debug" not in sent.headers
    assert answer.headers[b"x-edited"] == b"1"
    await gw.post({**CHAT, "max_tokens": 500})
    assert orjson.loads(gw.transport.sent[-1].body)["max_tokens"] == 10


async def test_a_variant_is_named_in_the_answer_and_counted() -> None:
    async def ok(request: SentRequest) -> MemoryResponse:
        return MemoryResponse.json(COMPLETION)

    gw = Gateway(ok, canaries={"m": {"model": "n", "percent": 100}})
    answer = await gw.post(CHAT, ((b"authorization", b"Tier free:k1"),))
    assert answer.headers[b"x-swarmgate-variant"] == b"n"
    assert gw.sent_to() == [B]
    assert gw.sample("gateway_variant_requests_total", split="m", variant="n", status="200") == 1
