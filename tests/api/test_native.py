"""The native inference face (``/api/v1/inference/*``) over plain HTTP: a real gateway in front
of the simulator (text) and of a tiny images-and-speech server written here (the simulator does
not serve ``/v1/images/generations`` or ``/v1/audio/speech`` in this tree yet)."""

from __future__ import annotations

import base64
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.api.e2e import FAST, Processes, assert_clean_log, model
from tests.auth.e2e import Reply, call, create_key
from tests.plugins.processes import Gateway

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 24
AUDIO = b"ID3\x03\x00fake-mp3-frames" * 4
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
TEXT = "/api/v1/inference/text-generation"


class MediaServer:
    """OpenAI's images and speech APIs in their simplest form; records each request body."""

    def __init__(self) -> None:
        self.received: list[tuple[str, Any]] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                received.append((self.path, body))
                if self.path == "/v1/images/generations":
                    image = {"b64_json": base64.b64encode(PNG).decode()}
                    self._answer(json.dumps({"created": 1, "data": [image]}).encode(), "json")
                elif self.path == "/v1/audio/speech":
                    self._answer(AUDIO, "audio/mpeg")
                else:
                    self.send_response(404)
                    self.send_header("content-length", "0")
                    self.end_headers()

            def _answer(self, data: bytes, kind: str) -> None:
                self.send_response(200)
                self.send_header("content-type", "application/json" if kind == "json" else kind)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def media() -> Iterator[MediaServer]:
    server = MediaServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def gw(procs: Processes, media: MediaServer) -> Iterator[Gateway]:
    sim = procs.sim({"chat": FAST})
    config = {
        "default_model": "chat",
        "models": {
            "chat": model(sim.url, aliases=("llama-2-7b",)),
            "sdxl": model(media.url, type="image"),
            "bark": model(media.url, type="audio"),
        },
        "native": {"results_ttl": 60},
    }
    gateway = procs.gateway(config)
    yield gateway
    assert_clean_log(gateway)


def post(gw: Gateway, path: str, body: Any, key: str | None = None) -> Reply:
    return call(gw.url + path, "POST", key=key or gw.admin_key, json_body=body)


def assert_native_error(reply: Reply, status: int, code: str) -> dict[str, Any]:
    assert reply.status == status, reply.text
    error = reply.body["error"]
    assert set(error) == {"code", "message", "details", "request_id", "timestamp"}, error
    assert error["code"] == code, error
    assert error["request_id"] == reply.headers["x-request-id"]
    assert ISO.match(error["timestamp"]), error
    assert isinstance(error["message"], str) and error["message"]
    return dict(error)


def test_text_generation_answers_an_inference_response(gw: Gateway) -> None:
    reply = post(gw, TEXT, {"model": "llama-2-7b", "prompt": "Explain the swarm", "max_tokens": 5})
    assert reply.status == 200, reply.text
    body = reply.body
    assert set(body) == {
        "task_id",
        "status",
        "result",
        "processing_time",
        "worker_id",
        "created_at",
        "completed_at",
    }
    assert body["status"] == "completed" and body["task_id"].startswith("task_")
    assert reply.headers["x-task-id"] == body["task_id"]
    result = body["result"]
    assert result["text"] and result["finish_reason"] == "length"
    assert result["usage"]["completion_tokens"] == 5
    assert body["worker_id"] == reply.headers["x-swarmgate-deployment"]
    assert ISO.match(body["created_at"]) and ISO.match(body["completed_at"])
    assert body["processing_time"] > 0

    again = call(f"{gw.url}/api/v1/inference/{body['task_id']}", key=gw.admin_key)
    assert again.status == 200 and again.body == body


def test_the_translation_sends_the_upstream_an_openai_request(
    gw: Gateway, media: MediaServer
) -> None:
    reply = post(
        gw,
        "/api/v1/inference/image-generation",
        {"model": "sdxl", "prompt": "a sunset", "width": 512, "height": 256, "seed": 7},
    )
    assert reply.status == 200, reply.text
    path, sent = media.received[-1]
    assert path == "/v1/images/generations"
    assert sent["size"] == "512x256" and sent["response_format"] == "b64_json"
    assert sent["seed"] == 7 and sent["num_inference_steps"] == 50 and sent["model"] == "sdxl"
    result = reply.body["result"]
    assert result["media_type"] == "image/png" and result["encoding"] == "base64"
    assert base64.b64decode(result["data"]) == PNG


def test_text_to_speech_returns_the_audio_in_base64(gw: Gateway, media: MediaServer) -> None:
    reply = post(
        gw, "/api/v1/inference/text-to-speech", {"model": "bark", "text": "Hello", "voice": "v1"}
    )
    assert reply.status == 200, reply.text
    path, sent = media.received[-1]
    assert path == "/v1/audio/speech"
    assert sent == {
        "model": "bark",
        "input": "Hello",
        "voice": "v1",
        "response_format": "mp3",
        "speed": 1.0,
    }
    result = reply.body["result"]
    assert result["media_type"] == "audio/mpeg" and result["bytes"] == len(AUDIO)
    assert base64.b64decode(result["data"]) == AUDIO


def test_stream_sends_token_events_then_done(gw: Gateway) -> None:
    reply = post(gw, TEXT, {"prompt": "Stream it", "max_tokens": 6, "stream": True})
    assert reply.status == 200, reply.text
    assert reply.headers["content-type"].startswith("text/event-stream")
    events = [block.split("\n") for block in reply.text.strip().split("\n\n")]
    names = [lines[0].removeprefix("event: ") for lines in events]
    assert names[-1] == "done" and set(names[:-1]) == {"token"}, names
    tokens = [json.loads(lines[1].removeprefix("data: ")) for lines in events[:-1]]
    assert [t["index"] for t in tokens] == list(range(len(tokens)))
    done = json.loads(events[-1][1].removeprefix("data: "))
    assert done["result"]["text"] == "".join(t["text"] for t in tokens)
    assert done["result"]["usage"]["completion_tokens"] == 6
    assert {t["task_id"] for t in tokens} == {done["task_id"]}
    again = call(f"{gw.url}/api/v1/inference/{done['task_id']}", key=gw.admin_key)
    assert again.body == done


def test_errors_in_seed_001s_format(gw: Gateway) -> None:
    error = assert_native_error(
        post(gw, TEXT, {"model": "nope", "prompt": "x"}), 404, "INVALID_MODEL"
    )
    assert error["details"]["model"] == "nope"
    assert "chat" in error["details"]["available_models"]
    error = assert_native_error(post(gw, TEXT, {"prompt": "x", "top_p": 3}), 400, "INVALID_REQUEST")
    assert error["details"] == {"param": "top_p"}
    assert_native_error(post(gw, TEXT, {"max_tokens": 3}), 400, "INVALID_REQUEST")
    bad_json = call(gw.url + TEXT, "POST", key=gw.admin_key, raw=b"{nope")
    assert_native_error(bad_json, 400, "INVALID_JSON")
    assert_native_error(post(gw, TEXT, {"prompt": "x"}, key="sk-sg-wrong"), 401, "UNAUTHORIZED")
    wrong_type = post(gw, TEXT, {"model": "sdxl", "prompt": "x"})
    assert_native_error(wrong_type, 400, "INVALID_REQUEST")
    too_long = post(gw, TEXT, {"prompt": "x", "max_tokens": 100_000})
    error = assert_native_error(too_long, 400, "UPSTREAM_REJECTED")
    assert error["details"] == {"upstream_status": 400}
    missing = call(f"{gw.url}/api/v1/inference/task_unknown", key=gw.admin_key)
    assert_native_error(missing, 404, "NOT_FOUND")
    wrong_method = call(gw.url + TEXT, key=gw.admin_key)
    assert_native_error(wrong_method, 405, "METHOD_NOT_ALLOWED")


def test_scopes_are_enforced_and_results_stay_with_their_owner(gw: Gateway) -> None:
    _, guest = create_key(gw, role="guest")  # models:read and inference:text only
    image = post(gw, "/api/v1/inference/image-generation", {"model": "sdxl", "prompt": "x"}, guest)
    assert_native_error(image, 403, "FORBIDDEN")
    mine = post(gw, TEXT, {"prompt": "mine", "max_tokens": 2}, guest)
    assert mine.status == 200, mine.text
    task = f"{gw.url}/api/v1/inference/{mine.body['task_id']}"
    assert call(task, key=guest).status == 200
    _, other = create_key(gw, role="user", owner="someone-else")
    assert_native_error(call(task, key=other), 404, "NOT_FOUND")


def test_native_requests_are_counted_under_their_own_endpoint(gw: Gateway) -> None:
    assert post(gw, TEXT, {"prompt": "count me", "max_tokens": 1}).status == 200
    metrics = call(gw.url + "/metrics").text
    assert re.search(
        r'gateway_requests_total\{endpoint="/api/v1/inference/text-generation",method="POST",'
        r'status="200"\} [1-9]',
        metrics,
    ), metrics
    assert 'endpoint="/api/v1/inference/{task_id}"' in metrics
