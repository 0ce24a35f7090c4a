"""The answer of ``POST /v1/responses``, as the client gets it.

``ResponsesAnswer`` stands in for the ASGI ``send`` the call stage writes to (as
``NativeAnswer`` does for the native face), so the call stage runs unchanged:

- translated (the deployment served chat completions): a whole answer is rewritten into a
  ``Response`` (``pipeline/responses.py``), a stream re-framed event by event as it arrives
  (``pipeline/responses_stream.py``);
- passed through (the deployment serves the Responses API itself): its bytes go on as they
  come; only a stored response is read on the way, to keep it.

An error status passes through unchanged in both (it is OpenAI's error schema already). A
response the client asked to store (``store`` defaults to true, as at OpenAI) is written to the
store before its last byte goes out, so that a ``GET`` right after finds it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from swarmgate.errors import UpstreamError
from swarmgate.pipeline.asgi import Headers
from swarmgate.pipeline.responses import response_of
from swarmgate.pipeline.responses_stream import ResponseStream
from swarmgate.types import Message, Send
from swarmgate.upstream.event_relay import FINAL
from swarmgate.upstream.sse import SSEDecoder

_REPLACED = frozenset({b"content-type", b"content-length"})
# Keeps a finished response (a whole one, as a dict); None when the client asked not to.
Keep = Callable[[dict[str, Any]], Awaitable[None]]


class ResponsesAnswer:
    def __init__(self, send: Send, skeleton: dict[str, Any], keep: Keep | None) -> None:
        self.client = send  # the client's own send: errors go straight to it
        self.skeleton = skeleton  # the response before its output (``responses.skeleton``)
        self.keep = keep
        self.native = False  # set once the pool is known: its deployments serve responses
        self._start: Message | None = None
        self._parts: list[bytes] = []
        self._stream: ResponseStream | None = None
        self._events: SSEDecoder | None = None  # a passed-through stream, read for storing
        self._opened = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self._start = message
            headers = dict(message.get("headers", []))
            if message["status"] < 300 and headers.get(b"content-type", b"").startswith(
                b"text/event-stream"
            ):
                if self.native:
                    self._events = SSEDecoder()
                else:
                    self._stream = ResponseStream(self.skeleton)
                await self.client(message)
            return
        if self._stream is not None:
            await self._translated(message)
        elif self._events is not None:
            await self._passed(message)
        else:
            self._parts.append(message.get("body", b""))
            if not message.get("more_body", False):
                await self._whole(b"".join(self._parts))

    async def _translated(self, message: Message) -> None:
        stream = self._stream
        assert stream is not None
        out = b""
        if not self._opened:
            self._opened = True
            out = stream.start()
        out += stream.feed(message.get("body", b""))
        if stream.completed and self.keep is not None:
            keep, self.keep = self.keep, None
            await keep(stream.response)
        if out or not message.get("more_body", False):
            await self.client({**message, "body": out})

    async def _passed(self, message: Message) -> None:
        body = message.get("body", b"")
        if self.keep is not None and self._events is not None:
            for event in self._events.feed(body):
                if not any(final in event.data for final in FINAL):
                    continue
                obj = orjson.loads(event.data)
                if isinstance(obj, dict) and obj.get("type", "").encode() in FINAL[:2]:
                    keep, self.keep = self.keep, None
                    await keep(obj["response"])
                    break
        await self.client(message)

    async def _whole(self, data: bytes) -> None:
        start = self._start
        assert start is not None, "a body follows its head"
        status: int = start["status"]
        if status >= 300:
            await self.client(start)
            await self.client({"type": "http.response.body", "body": data})
            return
        try:
            answer = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamError("the deployment's answer is not JSON") from None
        if self.native and isinstance(answer, dict):
            # Sent upstream as store false, with the history in place of the previous id:
            # the client is answered what it asked.
            answer["store"] = self.skeleton["store"]
            answer["previous_response_id"] = self.skeleton["previous_response_id"]
            response = answer
        else:
            response = response_of(answer, self.skeleton)
        if self.keep is not None:
            await self.keep(response)
        encoded = orjson.dumps(response)
        headers: Headers = [(k, v) for k, v in start.get("headers", []) if k not in _REPLACED]
        headers.append((b"content-type", b"application/json"))
        headers.append((b"content-length", str(len(encoded)).encode()))
        await self.client({"type": "http.response.start", "status": status, "headers": headers})
        await self.client({"type": "http.response.body", "body": encoded})
