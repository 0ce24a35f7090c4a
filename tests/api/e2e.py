"""What the end-to-end tests of the HTTP faces share: a recording model server, OpenAI error
checks, small waits. Their processes come from ``procs`` (``conftest.py``)."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import aiohttp
import openai
from openai.types.chat import ChatCompletionMessageParam

from tests.plugins.processes import Gateway, Processes

# Fast simulated models: tests spend their time on behaviour, not on simulated prefill.
FAST: dict[str, Any] = {"ttft_ms": 5, "tokens_per_second": 2000, "max_tokens_default": 8}
MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Tell me about the swarm."}
]
REQUEST_ID = re.compile(r"^[\x20-\x7e]{1,128}$")


@dataclass
class Received:
    path: str
    headers: dict[str, str]  # lower-cased names
    body: Any


class Recorder:
    """A real HTTP model server (stdlib, in a thread) that records what the gateway sent it.

    It answers every POST with a fixed chat completion, so a test can compare the request the
    client made with the one the deployment received: fields, headers, model name.
    """

    def __init__(self) -> None:
        self.received: list[Received] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = json.loads(self.rfile.read(length))
                headers = {k.lower(): v for k, v in self.headers.items()}
                received.append(Received(self.path, headers, body))
                answer = json.dumps(recorded_completion(body.get("model", "?"))).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def last(self) -> Received:
        assert self.received, "the recorder received nothing"
        return self.received[-1]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


def recorded_completion(model_name: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-recorded",
        "object": "chat.completion",
        "created": 1,
        "model": model_name,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "recorded"},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }


async def wait_until_full(gateway_url: str, model_name: str, timeout: float = 10) -> None:
    """Wait until no deployment of ``model_name`` has a free slot (a request holds it)."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            async with http.get(gateway_url + "/models/status") as r:
                status = await r.json()
            if status["models"][model_name]["usable"] == 0:
                return
            await asyncio.sleep(0.02)
    raise AssertionError(f"{model_name} never became busy")


def model(url: str, *, aliases: tuple[str, ...] = (), **extra: Any) -> dict[str, Any]:
    """A gateway model entry with one deployment at ``url``; ``extra`` goes to the model."""
    return {"aliases": list(aliases), "deployments": [{"url": url}], **extra}


def assert_clean_log(gw: Gateway) -> None:
    """Bad input and failing upstreams never crash a handler: no traceback, no 500."""
    log = gw.output()
    assert "Traceback" not in log, log
    assert "Exception in ASGI application" not in log, log
    assert "500 Internal Server Error" not in log, log


def assert_openai_error(body: Any, status_type: str, request_id: str | None = None) -> None:
    """``{"error": {"message", "type", "param", "code", "request_id"}}``."""
    assert isinstance(body, dict), body
    error = body["error"]
    assert set(error) >= {"message", "type", "param", "code", "request_id"}, error
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == status_type
    assert REQUEST_ID.match(error["request_id"])
    if request_id is not None:
        assert error["request_id"] == request_id


def assert_sdk_error(
    exc: openai.APIStatusError, status: int, error_type: str, code: str | None
) -> None:
    """An SDK exception carrying OpenAI's error schema and the response's request id."""
    assert exc.status_code == status, exc
    assert isinstance(exc.body, dict), exc.body
    assert exc.type == error_type, exc.body
    assert exc.code == code, exc.body
    assert exc.request_id is not None and REQUEST_ID.match(exc.request_id)
    assert exc.body["request_id"] == exc.request_id


__all__ = ["Gateway", "Processes"]
