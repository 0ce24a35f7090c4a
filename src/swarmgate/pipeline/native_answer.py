"""The upstream's OpenAI answer translated back into seed 001's ``InferenceResponse``.

``NativeAnswer`` stands in for the ASGI ``send`` the call stage writes to, so the call stage
runs unchanged: a whole answer is collected and rewritten before it goes out (the translation
runs inside the call stage, so a body that is not what the route promised fails the request
like any protocol error); a stream is re-framed event by event as it arrives, never buffered:

    event: token   data: {"task_id", "index", "text"}        one per chunk with text
    event: done    data: <InferenceResponse>                 the whole text, usage, timings
    event: error   data: {"error": {...seed 001's error...}} a stream that broke off

Completed answers are kept in ``Results`` for ``GET /api/v1/inference/{task_id}``.
"""

from __future__ import annotations

import base64
import os
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from swarmgate.errors import UpstreamError
from swarmgate.pipeline.asgi import Headers
from swarmgate.pipeline.exchange import Exchange
from swarmgate.pipeline.native_errors import UPSTREAM_REJECTED, code_of_openai, error_body
from swarmgate.pipeline.native_errors import timestamp as iso
from swarmgate.pipeline.results import Results
from swarmgate.types import Message, Send
from swarmgate.upstream.relay import usage_from
from swarmgate.upstream.sse import SSEDecoder, encode_event

# Answer headers that describe the upstream body, which the translation replaces.
_REPLACED = frozenset({b"content-type", b"content-length"})
_MAGIC = ((b"\x89PNG", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF8", "image/gif"))


def new_task_id() -> str:
    return "task_" + os.urandom(12).hex()


@dataclass(slots=True)
class Task:
    """One native request, as its InferenceResponse describes it."""

    id: str
    kind: str  # the route's name: text-generation, image-generation, text-to-speech
    scope: str  # needed to read the result again
    created_at: float = field(default_factory=time.time)
    started: float = field(default_factory=time.perf_counter)

    def keep(self, results: Results, x: Exchange, body: bytes) -> None:
        principal = x.principal
        if principal is not None:  # always, once an answer exists
            results.put(self.id, principal.subject, self.scope, body)

    def response(self, x: Exchange, status: str, result: dict[str, Any]) -> dict[str, Any]:
        return {
            "task_id": self.id,
            "status": status,
            "result": result,
            "processing_time": round(time.perf_counter() - self.started, 6),
            "worker_id": x.deployment if x.attempts else None,
            "created_at": iso(self.created_at),
            "completed_at": iso(),
        }


def image_media_type(data: bytes) -> str:
    for magic, media_type in _MAGIC:
        if data.startswith(magic):
            return media_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def text_result(data: bytes) -> dict[str, Any]:
    body = _json(data)
    try:
        choice = body["choices"][0]
        text = choice["text"]
        if not isinstance(text, str):
            raise TypeError
    except (KeyError, IndexError, TypeError):
        raise UpstreamError("the deployment's answer is not a text completion") from None
    usage = usage_from(body)
    return {
        "text": text,
        "finish_reason": choice.get("finish_reason"),
        "model": body.get("model"),
        "usage": _usage(usage.prompt_tokens, usage.completion_tokens) if usage else None,
    }


def image_result(data: bytes) -> dict[str, Any]:
    body = _json(data)
    try:
        image = body["data"][0]
        encoded = image["b64_json"]
        raw = base64.b64decode(encoded[:64], validate=False)
    except (KeyError, IndexError, TypeError, ValueError):
        raise UpstreamError("the deployment's answer carries no base64 image") from None
    result = {"data": encoded, "media_type": image_media_type(raw), "encoding": "base64"}
    if isinstance(image.get("revised_prompt"), str):
        result["revised_prompt"] = image["revised_prompt"]
    return result


def audio_result(data: bytes, content_type: str) -> dict[str, Any]:
    if not data:
        raise UpstreamError("the deployment answered no audio")
    return {
        "data": base64.b64encode(data).decode("ascii"),
        "media_type": content_type.split(";")[0].strip() or "application/octet-stream",
        "encoding": "base64",
        "bytes": len(data),
    }


def _json(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamError("the deployment's answer is not JSON") from None


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


class NativeAnswer:
    """The ``send`` the call stage writes to; translates, then sends to the client."""

    def __init__(self, send: Send, x: Exchange, task: Task, results: Results) -> None:
        self.client = send  # the client's own send
        self._x = x
        self._task = task
        self._results = results
        self._start: Message | None = None
        self._parts: list[bytes] = []
        self._stream: TextStream | None = None

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self._start = message
            headers = dict(message.get("headers", []))
            if headers.get(b"content-type", b"").startswith(b"text/event-stream"):
                self._stream = TextStream(self._task, self._x, self._results)
                message = {**message, "headers": self._headers(message)}
                await self.client(message)
            return
        if self._stream is not None:
            out = self._stream.feed(message.get("body", b""))
            await self.client({**message, "body": out})
            return
        self._parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            await self._unary(b"".join(self._parts))

    def _headers(self, start: Message, replace: bool = False) -> Headers:
        headers: Headers = [
            (k, v) for k, v in start.get("headers", []) if not (replace and k in _REPLACED)
        ]
        headers.append((b"x-task-id", self._task.id.encode()))
        return headers

    async def _unary(self, data: bytes) -> None:
        start = self._start
        assert start is not None, "a body follows its head"
        status: int = start["status"]
        upstream_type = dict(start.get("headers", [])).get(b"content-type", b"")
        if status >= 300:
            # A deployment's own refusal (the call stage passes 4xx through): its message, in
            # our format, with the same status and back-off headers.
            message = _upstream_message(data)
            body = error_body(
                UPSTREAM_REJECTED, message, self._x.head.request_id, {"upstream_status": status}
            )
        else:
            result = self._result(data, upstream_type.decode("latin-1"))
            body = self._task.response(self._x, "completed", result)
        encoded = orjson.dumps(body)
        if status < 300:
            self._task.keep(self._results, self._x, encoded)
        headers = self._headers(start, replace=True)
        headers.append((b"content-type", b"application/json"))
        headers.append((b"content-length", str(len(encoded)).encode()))
        await self.client({"type": "http.response.start", "status": status, "headers": headers})
        await self.client({"type": "http.response.body", "body": encoded})

    def _result(self, data: bytes, content_type: str) -> dict[str, Any]:
        kind = self._task.kind
        if kind == "image-generation":
            return image_result(data)
        if kind == "text-to-speech":
            return audio_result(data, content_type)
        return text_result(data)


class TextStream:
    """Re-frames a completion stream (as the relay forwards it) into the native events."""

    def __init__(self, task: Task, x: Exchange, results: Results) -> None:
        self._task = task
        self._x = x
        self._results = results
        self._decoder = SSEDecoder()
        self._text: list[str] = []
        self._index = 0
        self._finish: object = None
        self._usage: dict[str, int] | None = None
        self._model: object = None

    def feed(self, chunk: bytes) -> bytes:
        return b"".join(self._event(e.data) for e in self._decoder.feed(chunk))

    def _event(self, data: bytes) -> bytes:
        if data == b"[DONE]":
            return self._done()
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return b""  # the relay forwards only JSON and [DONE]; nothing else to say
        if not isinstance(obj, dict):
            return b""
        if isinstance(obj.get("error"), dict):
            return self._error(obj["error"])
        usage = usage_from(obj)
        if usage is not None:
            self._usage = _usage(usage.prompt_tokens, usage.completion_tokens)
        self._model = obj.get("model", self._model)
        choices = obj.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return b""
        choice = choices[0]
        if choice.get("finish_reason") is not None:
            self._finish = choice["finish_reason"]
        text = choice.get("text")
        if not isinstance(text, str) or not text:
            return b""
        self._text.append(text)
        event = {"task_id": self._task.id, "index": self._index, "text": text}
        self._index += 1
        return encode_event(orjson.dumps(event), "token")

    def _result(self) -> dict[str, Any]:
        return {
            "text": "".join(self._text),
            "finish_reason": self._finish,
            "model": self._model,
            "usage": self._usage,
        }

    def _done(self) -> bytes:
        body = orjson.dumps(self._task.response(self._x, "completed", self._result()))
        self._task.keep(self._results, self._x, body)
        return encode_event(body, "done")

    def _error(self, error: dict[str, Any]) -> bytes:
        message = str(error.get("message") or "the stream broke off")
        body = error_body(
            code_of_openai(error.get("code")),
            message,
            self._x.head.request_id,
            {"task_id": self._task.id, "partial_text": "".join(self._text)},
        )
        return encode_event(orjson.dumps(body), "error")


def _upstream_message(data: bytes) -> str:
    try:
        body = orjson.loads(data)
        error = body.get("error") if isinstance(body, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        if isinstance(message, str) and message:
            return message[:1000]
    except orjson.JSONDecodeError:
        pass
    return data[:200].decode("utf-8", "replace") or "the deployment refused the request"
