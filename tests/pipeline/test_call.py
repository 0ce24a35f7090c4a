"""The request path on the in-memory transport: attempts, outcomes, relay and accounting."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson
import pytest

from swarmgate.config import parse_settings
from swarmgate.errors import UpstreamUnreachable
from swarmgate.routing.balancers import DeploymentView, LeastOutstanding, RoutingFacts, SessionKey
from swarmgate.upstream.memory import MemoryResponse, SentRequest
from tests.pipeline.fleets import Gateway

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
COMPLETION = {
    "id": "c1",
    "object": "chat.completion",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "yo"}}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
}
A, B = "http://a.test:8000", "http://b.test:8000"
CHAT_PATH = "/v1/chat/completions"


def _chunk(content: str | None = None, usage: dict[str, int] | None = None) -> bytes:
    choices = [] if content is None else [{"index": 0, "delta": {"content": content}}]
    obj = {"id": "c1", "object": "chat.completion.chunk", "choices": choices, "usage": usage}
    return b"data: " + orjson.dumps(obj) + b"\n\n"


async def test_a_unary_answer_is_relayed_accounted_and_its_slot_released() -> None:
    async def ok(request: SentRequest) -> MemoryResponse:
        return MemoryResponse.json(COMPLETION)

    gw = Gateway(ok, A)
    answer = await gw.post(CHAT, headers=[(b"authorization", b"Bearer client-key")])
    assert answer.status == 200 and answer.json() == COMPLETION
    assert answer.headers[b"x-swarmgate-deployment"] == b"m@a.test:8000"
    sent = gw.transport.sent[0]
    assert sent.path == "/v1/chat/completions"
    # The deployment's own key replaces the client's; the request id travels with it.
    assert sent.headers["authorization"] == "Bearer up-secret"
    assert sent.headers["x-request-id"] == "rid-1"
    assert sent.body == orjson.dumps(CHAT)  # nothing changed: the client's own bytes
    assert gw.in_flight() == [0]
    assert gw.sample("gateway_tokens_total", model="m", direction="input") == 3
    assert gw.sample("gateway_tokens_total", model="m", direction="output") == 2
    assert gw.sample("gateway_requests_total", method="POST", endpoint=CHAT_PATH, status="200") == 1
    assert gw.sample("inference_requests_total", model="m", type="chat") == 1
    assert gw.sample("gateway_requests_in_flight") == 0


async def test_an_unreachable_deployment_is_replaced_by_another_before_anything_is_sent() -> None:
    async def a_down(request: SentRequest) -> MemoryResponse:
        if request.base_url == A:
            raise UpstreamUnreachable("could not reach it")
        return MemoryResponse.json(COMPLETION)

    gw = Gateway(a_down, A, B, balancer="round_robin")
    statuses = [(await gw.post(CHAT)).status for _ in range(4)]
    assert statuses == [200] * 4
    assert gw.in_flight() == [0, 0]
    down = gw.sample("gateway_upstream_errors_total", deployment="m@a.test:8000", kind="connect")
    assert down == 2  # round robin sent every other request to A first


async def test_a_lone_unreachable_deployment_is_a_502_naming_it() -> None:
    async def down(request: SentRequest) -> MemoryResponse:
        raise UpstreamUnreachable("could not reach http://a.test:8000 (ConnectionRefused)")

    gw = Gateway(down, A)
    answer = await gw.post(CHAT)
    assert answer.status == 502
    message = answer.json()["error"]["message"]
    assert "m@a.test:8000" in message and "could not reach" in message
    assert len(gw.transport.sent) == 1 and gw.in_flight() == [0]


async def test_a_5xx_is_a_502_counted_by_its_status_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(request: SentRequest) -> MemoryResponse:
        return MemoryResponse.json({"error": {"message": "out of memory"}}, status=503)

    gw = Gateway(broken, A, B, balancer="round_robin")  # A first
    with caplog.at_level(logging.INFO, logger="swarmgate.requests"):
        answer = await gw.post(CHAT)
    assert answer.status == 502 and "out of memory" in answer.json()["error"]["message"]
    assert len(gw.transport.sent) == 1  # it reached the deployment: no second attempt
    kind = gw.sample("gateway_upstream_errors_total", deployment="m@a.test:8000", kind="http_503")
    assert kind == 1
    lines = [r.getMessage() for r in caplog.records if r.name == "swarmgate.requests"]
    assert len(lines) == 1
    for part in (
        "request_id=rid-1",
        "route=chat",
        "model=m",
        "deployment=m@a.test:8000",
        "outcome=http_error",
        "status=502",
        "latency_ms=",
    ):
        assert part in lines[0]


async def test_an_upstream_4xx_passes_through_and_is_not_the_deployments_failure() -> None:
    async def refuses(request: SentRequest) -> MemoryResponse:
        response = MemoryResponse.json({"error": {"message": "context too long"}}, status=400)
        response.headers = {**response.headers, "retry-after": "3"}
        return response

    gw = Gateway(refuses, A)
    answer = await gw.post(CHAT)
    assert answer.status == 400 and answer.headers[b"retry-after"] == b"3"
    assert (
        gw.sample("gateway_upstream_errors_total", deployment="m@a.test:8000", kind="refused")
        is None
    )


async def test_a_stream_is_relayed_chunk_by_chunk_and_the_usage_chunk_hidden() -> None:
    async def stream(request: SentRequest) -> MemoryResponse:
        assert request.json()["stream_options"] == {"include_usage": True}  # type: ignore[index]
        return MemoryResponse.sse(
            _chunk("a"),
            _chunk("b"),
            _chunk(usage={"prompt_tokens": 4, "completion_tokens": 2}),
            b"data: [DONE]\n\n",
        )

    gw = Gateway(stream, A)
    answer = await gw.post({**CHAT, "stream": True})
    assert answer.status == 200
    assert answer.headers[b"content-type"].startswith(b"text/event-stream")
    events = [e for e in answer.body.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]" and len(events) == 3  # two deltas, DONE
    assert gw.sample("gateway_tokens_total", model="m", direction="output") == 2
    assert gw.in_flight() == [0]


async def test_a_stream_broken_after_its_first_byte_ends_with_an_error_event() -> None:
    async def breaks(request: SentRequest) -> MemoryResponse:
        return MemoryResponse.sse(_chunk("a"), ConnectionResetError("reset"))

    gw = Gateway(breaks, A, B, balancer="round_robin")  # A first
    answer = await gw.post({**CHAT, "stream": True})
    assert answer.status == 200  # the head went out with the first chunk
    last = answer.body.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
    error = orjson.loads(last.removeprefix(b"data: "))["error"]
    assert error["code"] == "bad_gateway" and error["request_id"] == "rid-1"
    assert len(gw.transport.sent) == 1  # no retry after the first byte
    assert (
        gw.sample("gateway_upstream_errors_total", deployment="m@a.test:8000", kind="stream_broken")
        == 1
    )
    assert gw.sample("gateway_requests_total", method="POST", endpoint=CHAT_PATH, status="502") == 1


async def test_a_stream_that_ends_without_done_before_its_first_byte_is_a_502() -> None:
    async def empty(request: SentRequest) -> MemoryResponse:
        return MemoryResponse.sse()

    answer = await Gateway(empty, A).post({**CHAT, "stream": True})
    assert answer.status == 502 and "[DONE]" in answer.json()["error"]["message"]


async def test_a_hung_deployment_times_out_as_a_504() -> None:
    async def hangs(request: SentRequest) -> MemoryResponse:
        await asyncio.sleep(30)
        raise AssertionError("the watchdog should have fired")

    timeouts = {"first_byte": 0.05, "idle": 0.05, "total": 0.05}
    gw = Gateway(hangs, A, deployment={"timeouts": timeouts})
    answer = await gw.post(CHAT)
    assert answer.status == 504 and answer.json()["error"]["code"] == "upstream_timeout"
    kind = gw.sample("gateway_upstream_errors_total", deployment="m@a.test:8000", kind="timeout")
    assert kind == 1
    assert gw.in_flight() == [0]


async def test_every_exit_path_finishes_the_record() -> None:
    async def ok(request: SentRequest) -> MemoryResponse:
        return MemoryResponse.json(COMPLETION)

    gw = Gateway(ok, A)
    bad = await gw.post({"model": "m"})  # no messages
    unknown = await gw.post({**CHAT, "model": "nope"})
    wrong_type = await gw.post({"model": "m", "input": "x"}, path="/v1/embeddings")
    assert (bad.status, unknown.status, wrong_type.status) == (400, 404, 400)
    assert gw.transport.sent == []
    requests = "gateway_requests_total"
    assert gw.sample(requests, method="POST", endpoint=CHAT_PATH, status="400") == 1
    assert gw.sample(requests, method="POST", endpoint=CHAT_PATH, status="404") == 1
    assert gw.sample(requests, method="POST", endpoint="/v1/embeddings", status="400") == 1
    # Only the one that reached a model counts as an inference request of that model.
    assert gw.sample("inference_requests_total", model="m", type="embeddings") == 1
    assert gw.sample("inference_requests_total", model="m", type="chat") is None
    assert gw.sample("gateway_requests_in_flight") == 0


async def test_a_client_leaving_mid_stream_frees_the_slot_at_once() -> None:
    first_sent = asyncio.Event()

    async def slow_events() -> AsyncIterator[bytes]:
        yield _chunk("a")
        first_sent.set()
        await asyncio.sleep(30)
        yield b"data: [DONE]\n\n"

    async def slow(request: SentRequest) -> MemoryResponse:
        return MemoryResponse.sse_from(slow_events())

    async def leaves() -> dict[str, Any]:
        await first_sent.wait()
        return {"type": "http.disconnect"}

    gw = Gateway(slow, A)
    answer = await asyncio.wait_for(gw.post({**CHAT, "stream": True}, receive=leaves), 5)
    assert answer.status == 200
    assert gw.in_flight() == [0]
    assert gw.sample("gateway_requests_total", method="POST", endpoint=CHAT_PATH, status="499") == 1
    # Not the deployment's failure.
    assert (
        gw.sample("gateway_upstream_errors_total", deployment="m@a.test:8000", kind="client_gone")
        is None
    )


async def test_deployment_weights_share_the_traffic() -> None:
    async def ok(request: SentRequest) -> MemoryResponse:
        return MemoryResponse.json(COMPLETION)

    deployments = [{"url": A, "weight": 3}, {"url": B, "weight": 1}]
    settings = {"models": {"m": {"deployments": deployments, "balancer": "weighted_round_robin"}}}
    gw = Gateway(ok, A)
    gw.fleet.replace(parse_settings(settings, {}))
    for _ in range(8):
        assert (await gw.post(CHAT)).status == 200
    sent = [r.base_url for r in gw.transport.sent]
    assert (sent.count(A), sent.count(B)) == (6, 2)


async def test_a_session_header_keeps_a_conversation_on_one_deployment() -> None:
    async def ok(request: SentRequest) -> MemoryResponse:
        return MemoryResponse.json(COMPLETION)

    urls = [f"http://d{i}.test:8000" for i in range(4)]
    gw = Gateway(ok, *urls, balancer={"strategy": "consistent_hash", "header": "X-Conversation"})
    where: dict[str, set[str]] = {}
    for _ in range(3):  # turns
        for conversation in range(12):
            session = f"conv-{conversation}".encode()
            answer = await gw.post(CHAT, headers=[(b"x-conversation", session)])
            assert answer.status == 200
            name = answer.headers[b"x-swarmgate-deployment"].decode()
            where.setdefault(f"conv-{conversation}", set()).add(name)
    assert all(len(names) == 1 for names in where.values()), where
    assert len(set().union(*where.values())) > 1  # the conversations spread out


async def test_the_session_key_is_looked_for_only_when_the_balancer_keys_on_one() -> None:
    async def ok(request: SentRequest) -> MemoryResponse:
        return MemoryResponse.json(COMPLETION)

    seen: list[RoutingFacts] = []

    class Recording(LeastOutstanding):
        def choose(self, views: Sequence[DeploymentView], request: RoutingFacts) -> int:
            seen.append(request)
            return super().choose(views, request)

    session = [(b"x-session-id", b"conv-1")]
    gw = Gateway(ok, A, B)
    gw.fleet.resolve("m").balancer = Recording()
    await gw.post({**CHAT, "user": "u"}, headers=session)
    sticky = Recording()
    sticky.session = SessionKey(["header"])
    gw.fleet.resolve("m").balancer = sticky
    await gw.post({**CHAT, "user": "u"}, headers=session)
    assert [facts.session for facts in seen] == [None, "conv-1"]


async def test_sessions_may_be_keyed_by_the_user_field_of_the_body() -> None:
    async def ok(request: SentRequest) -> MemoryResponse:
        return MemoryResponse.json(COMPLETION)

    urls = [f"http://d{i}.test:8000" for i in range(4)]
    gw = Gateway(ok, *urls, balancer={"strategy": "consistent_hash", "hash_on": "user"})
    names = set()
    for _ in range(6):
        answer = await gw.post({**CHAT, "user": "user-42"})
        names.add(answer.headers[b"x-swarmgate-deployment"])
    assert len(names) == 1
    assert len(gw.transport.sent) == 6


async def test_a_busy_model_queues_for_a_slot_when_allowed() -> None:
    release = asyncio.Event()

    async def slow(request: SentRequest) -> MemoryResponse:
        await release.wait()
        return MemoryResponse.json(COMPLETION)

    gw = Gateway(slow, A, deployment={"max_concurrent": 1}, queue_timeout=5)
    first = asyncio.create_task(gw.post(CHAT))
    second = asyncio.create_task(gw.post(CHAT))
    await asyncio.sleep(0.05)
    assert not second.done()  # waiting in line, not refused
    release.set()
    assert [(await first).status, (await second).status] == [200, 200]
    assert gw.in_flight() == [0]


@pytest.mark.parametrize(
    "model", [{}, {"queue_timeout": 0.1}, {"queue_timeout": 5, "queue_size": 0}]
)
async def test_a_busy_model_refuses_past_its_queue(model: dict[str, Any]) -> None:
    release = asyncio.Event()

    async def slow(request: SentRequest) -> MemoryResponse:
        await release.wait()
        return MemoryResponse.json(COMPLETION)

    gw = Gateway(slow, A, deployment={"max_concurrent": 1}, **model)
    first = asyncio.create_task(gw.post(CHAT))
    await asyncio.sleep(0.01)
    refused = await asyncio.wait_for(gw.post(CHAT), 2)
    assert refused.status == 503 and refused.json()["error"]["code"] == "no_deployment_available"
    release.set()
    assert (await first).status == 200
