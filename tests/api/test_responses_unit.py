"""The Responses face in process (api/responses.py), over the in-memory transport: what a
deployment is sent each way, and a store that fails."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from swarmgate.api.responses import TRANSLATED, Responses, Turn
from swarmgate.api.v1 import Inference
from swarmgate.config import parse_settings
from swarmgate.errors import StoreError
from swarmgate.limits.admission import reservation
from swarmgate.observability.metrics import Metrics
from swarmgate.pipeline.accounting import Accounting
from swarmgate.pipeline.call import Caller
from swarmgate.pipeline.queueing import Queueing
from swarmgate.pipeline.responses_answer import ResponsesAnswer
from swarmgate.pipeline.stages import Admission
from swarmgate.routing.fleet import Fleet
from swarmgate.routing.plan import Router
from swarmgate.store.responses import StoredResponse
from swarmgate.types import Principal, Role
from swarmgate.upstream.memory import MemoryResponse, MemoryTransport, SentRequest

ALICE = Principal("alice", Role.USER, frozenset({"inference:text"}), key_id="k-alice")
CHAT = {
    "id": "c",
    "object": "chat.completion",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1},
}
NATIVE = {
    "id": "resp_up",
    "object": "response",
    "output": [],
    "usage": {"input_tokens": 2, "output_tokens": 5},
}


class Alice:
    async def authenticate(self, *args: Any) -> Principal:
        return ALICE


class Store:
    """ResponseStore's face, in memory; ``fail`` makes every call a StoreError."""

    def __init__(self) -> None:
        self.rows: dict[str, StoredResponse] = {}
        self.fail = False

    def _check(self) -> None:
        if self.fail:
            raise StoreError("database error: gone")

    async def put(self, stored: StoredResponse) -> None:
        self._check()
        self.rows[stored.id] = stored

    async def get(self, response_id: str, owner: str) -> StoredResponse | None:
        self._check()
        row = self.rows.get(response_id)
        return row if row is not None and row.owner == owner else None

    async def delete(self, response_id: str, owner: str) -> bool:
        self._check()
        return self.rows.pop(response_id, None) is not None


def face(store: Store) -> tuple[Responses, MemoryTransport]:
    settings = parse_settings(
        {
            "models": {
                "chat": {"deployments": [{"url": "http://127.0.0.1:9"}]},
                "native": {
                    "capabilities": ["responses"],
                    "deployments": [{"url": "http://127.0.0.1:10"}],
                },
            }
        },
        {},
    )

    async def answer(request: SentRequest) -> MemoryResponse:
        return MemoryResponse.json(NATIVE if request.path == "/v1/responses" else CHAT)

    transport = MemoryTransport(answer)
    metrics = Metrics()
    inference = Inference(
        Alice(),
        Fleet(settings),
        Admission(),
        Router(),
        Caller(transport, Queueing(settings.limits, metrics)),
        Accounting(metrics),
        1 << 20,
    )
    return Responses(inference, store), transport  # type: ignore[arg-type]


async def call(
    responses: Responses, method: str, path: str, body: object = None
) -> tuple[int, Any]:
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": [],
        "client": ("127.0.0.1", 1),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": orjson.dumps(body)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    handler = responses.create if method == "POST" else responses.stored
    await handler(scope, receive, send)
    data = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], orjson.loads(data)


async def test_each_way_the_deployment_is_sent_the_conversation_and_no_store() -> None:
    store = Store()
    responses, transport = face(store)
    status, first = await call(responses, "POST", "/v1/responses", {"model": "chat", "input": "A"})
    assert status == 200 and first["output"][0]["content"][0]["text"] == "Hi"
    body = {"model": "native", "input": "B", "previous_response_id": first["id"]}
    status, second = await call(responses, "POST", "/v1/responses", body)
    assert status == 200 and second["id"] == "resp_up"
    assert second["previous_response_id"] == first["id"] and second["store"] is True
    chat, native = (orjson.loads(r.body) for r in transport.sent)
    assert transport.sent[0].path == "/v1/chat/completions" and chat["messages"] == [
        {"role": "user", "content": "A"}
    ]
    assert transport.sent[1].path == "/v1/responses"
    assert native["store"] is False and "previous_response_id" not in native
    assert [i.get("role") for i in native["input"]] == ["user", "assistant", "user"]
    assert set(store.rows) == {first["id"], "resp_up"}


async def test_a_failing_store_is_a_503_to_read_and_no_failure_to_answer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = Store()
    responses, _ = face(store)
    store.fail = True
    status, answer = await call(responses, "POST", "/v1/responses", {"model": "chat", "input": "A"})
    assert status == 200 and answer["output"]
    assert "not stored" in caplog.text
    status, error = await call(responses, "GET", f"/v1/responses/{answer['id']}")
    assert status == 503 and error["error"]["code"] == "service_unavailable"
    body = {"model": "chat", "input": "B", "previous_response_id": "resp_x"}
    status, error = await call(responses, "POST", "/v1/responses", body)
    assert status == 503


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/responses/r/other"), ("DELETE", "/v1/responses/r/input_items")],
)
async def test_no_such_route_under_a_response(method: str, path: str) -> None:
    responses, _ = face(Store())
    status, error = await call(responses, method, path)
    assert status == 404 and error["error"]["message"].startswith("no route")


async def _nowhere(message: dict[str, Any]) -> None:
    raise AssertionError("nothing is sent")


def test_admission_reserves_for_a_responses_request_either_way() -> None:
    turn = Turn(None, ResponsesAnswer(_nowhere, {}, None))
    body = orjson.dumps({"model": "m", "input": "x" * 400, "max_output_tokens": 7})
    translated = turn.parse(TRANSLATED, body)
    native = turn._native()
    for request in (translated, native):
        assert reservation(request, "responses", "output", 1024) == 7
        # The prompt is estimated from what goes upstream, as for chat.
        assert reservation(request, "responses", "input", 1024) >= 100
