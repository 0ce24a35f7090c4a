"""The hot path's last line of defence, in process: a bug is a JSON 500, never a traceback."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from swarmgate.api.v1 import Inference
from swarmgate.config import parse_settings
from swarmgate.observability.metrics import Metrics
from swarmgate.pipeline.accounting import Accounting
from swarmgate.pipeline.call import Caller
from swarmgate.pipeline.queueing import Queueing
from swarmgate.pipeline.stages import Admission
from swarmgate.routing.fleet import Fleet
from swarmgate.routing.plan import Router
from swarmgate.types import Principal
from swarmgate.upstream.transport import HttpTransport


class Broken:
    async def authenticate(self, *args: Any) -> Principal:
        raise ValueError("a bug")


def _proxy() -> Inference:
    settings = parse_settings(
        {"models": {"m": {"deployments": [{"url": "http://127.0.0.1:9"}]}}}, {}
    )
    metrics = Metrics()
    return Inference(
        Broken(),
        Fleet(settings),
        Admission(),
        Router(),
        Caller(HttpTransport(), Queueing(settings.limits, metrics)),
        Accounting(metrics),
        1 << 20,
    )


SCOPE = {
    "type": "http",
    "method": "POST",
    "path": "/v1/chat/completions",
    "headers": [(b"x-request-id", b"rid-bug-1")],
    "client": ("127.0.0.1", 5000),
}


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"{}"}


async def test_an_unexpected_error_is_an_openai_style_500(caplog: pytest.LogCaptureFixture) -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await _proxy()(dict(SCOPE), _receive, send)
    assert sent[0]["status"] == 500
    body = orjson.loads(sent[1]["body"])
    assert body["error"]["type"] == "api_error" and body["error"]["request_id"] == "rid-bug-1"
    assert "a bug" not in sent[1]["body"].decode()
    assert "rid-bug-1" in caplog.text and "ValueError" in caplog.text


async def test_a_client_that_left_does_not_turn_the_error_into_a_crash() -> None:
    async def gone(message: dict[str, Any]) -> None:
        raise OSError("connection reset")

    await _proxy()(dict(SCOPE), _receive, gone)  # returns quietly
