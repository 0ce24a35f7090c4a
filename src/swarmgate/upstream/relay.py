"""Re-framing an upstream's OpenAI SSE stream for the client, counting tokens on the way.

Pure (no I/O): fed the upstream's raw chunks, returns the bytes to send on. It always sees the
usage chunk (the gateway asks every upstream for ``stream_options.include_usage``). When the
client did not ask for usage, the client gets what it would have got from the upstream
directly: the usage-only chunk is dropped, and so is the ``"usage": null`` that upstreams
following OpenAI add to every other chunk once usage is asked for.
"""

from __future__ import annotations

import orjson

from swarmgate.types import Usage
from swarmgate.upstream.sse import DONE, SSEDecoder, SSEEvent


def usage_from(obj: object) -> Usage | None:
    if not isinstance(obj, dict):
        return None
    usage = obj.get("usage")
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens")
    if prompt is None and completion is None:  # the Responses API's names
        prompt, completion = usage.get("input_tokens"), usage.get("output_tokens")
    return Usage(
        prompt if isinstance(prompt, int) else 0,
        completion if isinstance(completion, int) else 0,
    )


def has_usage(data: bytes) -> bool:
    """Whether a JSON text carries a ``"usage": {...}`` object, without parsing it."""
    at = data.rfind(b'"usage"')
    if at < 0:
        return False
    rest = data[at + 7 : at + 16].lstrip(b" \t\r\n")
    return rest[:1] == b":" and rest[1:].lstrip(b" \t\r\n")[:1] == b"{"


# How "usage": null is written by the JSON encoders of the servers we front (compact: orjson,
# pydantic, Go, llama.cpp; spaced: Python's json). A key inside a JSON string has its quotes
# escaped, so these bytes only ever match a real member.
_NULL_USAGE = (b',"usage":null', b'"usage":null,', b', "usage": null', b'"usage": null, ')


def without_null_usage(data: bytes) -> bytes:
    """A JSON object's text without its ``"usage": null`` member (the last one: the top-level
    member comes after ``choices``); parsed and re-written only for an unusual spelling."""
    for pattern in _NULL_USAGE:
        at = data.rfind(pattern)
        if at >= 0:
            return data[:at] + data[at + len(pattern) :]
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return data
    if isinstance(obj, dict) and "usage" in obj and obj["usage"] is None:
        del obj["usage"]
        return orjson.dumps(obj)
    return data


def usage_object(data: bytes) -> Usage | None:
    """The top-level ``usage`` object of a large JSON answer, parsed alone (it is flat or
    nearly so: a brace count finds its end). None if it cannot be found that way."""
    at = data.rfind(b'"usage"')
    start = data.find(b"{", at) if at >= 0 else -1
    if start < 0 or data[at + 7 : start].strip(b" \t\r\n:"):
        return None
    depth = 0
    for end in range(start, min(len(data), start + 4096)):
        char = data[end]
        if char == 0x7B:  # {
            depth += 1
        elif char == 0x7D:  # }
            depth -= 1
            if depth == 0:
                try:
                    return usage_from({"usage": orjson.loads(data[start : end + 1])})
                except orjson.JSONDecodeError:
                    return None
    return None


class DecodingRelay:
    """What every relay of an SSE stream shares: fed the upstream's raw chunks, it decodes
    them into events and returns what ``_frame`` makes of them; ``usage`` is what was counted,
    ``done`` whether the stream's own end was seen."""

    __slots__ = ("_decoder", "done", "started", "usage")

    def __init__(self) -> None:
        self._decoder = SSEDecoder()
        self.usage = Usage()
        self.done = False
        self.started = False  # whether the response head has gone to the client

    def feed(self, chunk: bytes) -> bytes:
        return self._frame(self._decoder.feed(chunk))

    def close(self) -> bytes:
        """At a clean end of the upstream stream: whatever a final unterminated event held."""
        return self._frame(self._decoder.close())

    def _frame(self, events: list[SSEEvent]) -> bytes:
        raise NotImplementedError


class StreamRelay(DecodingRelay):
    __slots__ = ("wants_usage",)

    def __init__(self, wants_usage: bool) -> None:
        super().__init__()
        self.wants_usage = wants_usage

    def _frame(self, events: list[SSEEvent]) -> bytes:
        out = []
        for event in events:
            data = event.data
            if data == b"[DONE]":
                self.done = True
                out.append(DONE)
                continue
            # Cheap tests first: only chunks whose usage is an object are parsed (upstreams that
            # follow OpenAI send "usage": null in every other chunk).
            if b'"usage"' in data:
                if has_usage(data):
                    if not self._keep(data):
                        continue
                elif not self.wants_usage:
                    data = without_null_usage(data)
            out.append(b"data: " + data + b"\n\n")
        return b"".join(out)

    def _keep(self, data: bytes) -> bool:
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return True
        usage = usage_from(obj)
        if usage is None:
            return True
        self.usage = usage
        usage_only = not obj.get("choices")
        return self.wants_usage or not usage_only
