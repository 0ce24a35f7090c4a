"""A chat completion stream re-framed as the Responses API's events (pure, no I/O).

Fed the chat SSE the relay forwards (always with the usage chunk: the gateway asks for it),
it returns the events the Responses API streams, each ``event: <type>`` with its JSON, in
OpenAI's order:

    response.created, response.in_progress                      at the first chunk
    response.output_item.added, response.content_part.added     when text starts
    response.output_text.delta                                  one per chunk with text
    response.output_item.added                                  when a tool call starts
    response.function_call_arguments.delta                      one per argument fragment
    ....done events for each item (text, part, arguments, item)  at the end
    response.completed (or response.incomplete) with usage       at [DONE]
    error                                                       a stream that broke off

Chunks are translated as they arrive, never buffered: only the text and arguments so far are
kept, for the ``done`` events and the final response.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from swarmgate.pipeline.responses import (
    call_item,
    finished,
    message_item,
    new_id,
    output_text,
    usage_of,
)
from swarmgate.upstream.sse import SSEDecoder, encode_event


@dataclass(slots=True)
class _Item:
    index: int  # its output_index
    id: str
    kind: str  # "message" or "function_call"
    parts: list[str] = field(default_factory=list)  # the text, or the arguments
    call_id: str = ""
    name: str = ""

    def done(self) -> dict[str, Any]:
        if self.kind == "message":
            return message_item(self.id, "".join(self.parts))
        return call_item(self.id, self.call_id, self.name, "".join(self.parts))


class ResponseStream:
    """Translates one chat stream into one response's events."""

    def __init__(self, response: dict[str, Any]) -> None:
        self.response = response  # the skeleton (``responses.skeleton``), filled at the end
        self.completed = False  # the final event has been made: the response is whole
        self._decoder = SSEDecoder()
        self._sequence = 0
        self._items: list[_Item] = []
        self._text: _Item | None = None
        self._calls: dict[int, _Item] = {}  # by the chat tool call's index
        self._usage: Any = None
        self._finish: object = None

    def feed(self, chunk: bytes) -> bytes:
        return b"".join(self._chunk(e.data) for e in self._decoder.feed(chunk))

    def start(self) -> bytes:
        """The opening events, before any chunk of the answer."""
        # OpenAI's schema has no null usage: an unfinished response leaves it out.
        snapshot = {k: v for k, v in self.response.items() if k != "usage"}
        return self._event("response.created", response=snapshot) + self._event(
            "response.in_progress", response=snapshot
        )

    def _event(self, kind: str, **fields: Any) -> bytes:
        body = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return encode_event(orjson.dumps(body), kind)

    def _chunk(self, data: bytes) -> bytes:
        if data == b"[DONE]":
            return self._done()
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return b""
        if not isinstance(obj, dict):
            return b""
        error = obj.get("error")
        if isinstance(error, dict):
            return self._event(
                "error",
                code=error.get("code"),
                message=str(error.get("message") or "the stream broke off"),
                param=error.get("param"),
            )
        if isinstance(obj.get("usage"), dict):
            self._usage = obj["usage"]
        choices = obj.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return b""
        choice = choices[0]
        if choice.get("finish_reason") is not None:
            self._finish = choice["finish_reason"]
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            return b""
        out = []
        text = delta.get("content")
        if isinstance(text, str) and text:
            out.append(self._text_delta(text))
        for call in delta.get("tool_calls") or ():
            if isinstance(call, dict):
                out.append(self._call_delta(call))
        return b"".join(out)

    def _text_delta(self, text: str) -> bytes:
        out = b""
        item = self._text
        if item is None:
            item = self._text = self._open("message", new_id("msg"))
            out = self._event(
                "response.output_item.added",
                output_index=item.index,
                item=message_item(item.id, "", "in_progress"),
            ) + self._event(
                "response.content_part.added",
                item_id=item.id,
                output_index=item.index,
                content_index=0,
                part=output_text(""),
            )
        item.parts.append(text)
        return out + self._event(
            "response.output_text.delta",
            item_id=item.id,
            output_index=item.index,
            content_index=0,
            delta=text,
            logprobs=[],
        )

    def _call_delta(self, call: dict[str, Any]) -> bytes:
        out = b""
        index = call.get("index", 0)
        function = call.get("function") or {}
        item = self._calls.get(index)
        if item is None:
            item = self._calls[index] = self._open("function_call", new_id("fc"))
            item.call_id = str(call.get("id") or new_id("call"))
            item.name = str(function.get("name") or "")
            out = self._event(
                "response.output_item.added",
                output_index=item.index,
                item=call_item(item.id, item.call_id, item.name, "", "in_progress"),
            )
        fragment = function.get("arguments")
        if not isinstance(fragment, str) or not fragment:
            return out
        item.parts.append(fragment)
        return out + self._event(
            "response.function_call_arguments.delta",
            item_id=item.id,
            output_index=item.index,
            delta=fragment,
        )

    def _open(self, kind: str, item_id: str) -> _Item:
        item = _Item(len(self._items), item_id, kind)
        self._items.append(item)
        return item

    def _done(self) -> bytes:
        out = []
        for item in self._items:
            whole = item.done()
            text = "".join(item.parts)
            if item.kind == "message":
                part = whole["content"][0]
                at = {"item_id": item.id, "output_index": item.index, "content_index": 0}
                out.append(self._event("response.output_text.done", **at, text=text, logprobs=[]))
                out.append(self._event("response.content_part.done", **at, part=part))
            else:
                out.append(
                    self._event(
                        "response.function_call_arguments.done",
                        item_id=item.id,
                        output_index=item.index,
                        name=item.name,
                        arguments=text,
                    )
                )
            out.append(
                self._event("response.output_item.done", output_index=item.index, item=whole)
            )
        response = self.response
        response["output"] = [item.done() for item in self._items]
        response["usage"] = usage_of(self._usage)
        finished(response, self._finish)
        kind = "response.completed" if response["status"] == "completed" else "response.incomplete"
        self.completed = True
        out.append(self._event(kind, response=response))
        return b"".join(out)
