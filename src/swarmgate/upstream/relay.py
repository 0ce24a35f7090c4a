"""Re-framing an upstream's OpenAI SSE stream for the client, counting tokens on the way.

Pure (no I/O): fed the upstream's raw chunks, returns the bytes to send on. It always sees the
usage chunk (the proxy asks every upstream for ``stream_options.include_usage``) and drops it
again when the client did not ask for it, as OpenAI itself would not have sent it.
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
    return Usage(
        prompt if isinstance(prompt, int) else 0,
        completion if isinstance(completion, int) else 0,
    )


class StreamRelay:
    __slots__ = ("_decoder", "done", "started", "usage", "wants_usage")

    def __init__(self, wants_usage: bool) -> None:
        self._decoder = SSEDecoder()
        self.wants_usage = wants_usage
        self.usage = Usage()
        self.done = False
        self.started = False  # whether the response head has gone to the client

    def feed(self, chunk: bytes) -> bytes:
        return self._frame(self._decoder.feed(chunk))

    def close(self) -> bytes:
        """At a clean end of the upstream stream: whatever a final unterminated event held."""
        return self._frame(self._decoder.close())

    def _frame(self, events: list[SSEEvent]) -> bytes:
        out = []
        for event in events:
            data = event.data
            if data == b"[DONE]":
                self.done = True
                out.append(DONE)
                continue
            # Cheap substring test first: only chunks that mention usage are parsed.
            if b'"usage"' in data and not self._keep(data):
                continue
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
