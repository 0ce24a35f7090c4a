"""Relaying a stream of named events (the Responses API's), counting tokens on the way.

Pure (no I/O), with ``StreamRelay``'s face: fed the upstream's raw chunks, it returns each
event re-framed (``event:`` name and ``data:``), unaltered. Such a stream has no ``[DONE]``:
it is done at its final event (``response.completed``, ``response.incomplete`` or
``response.failed``), whose response carries the usage (``input_tokens``/``output_tokens``).
"""

from __future__ import annotations

import orjson

from swarmgate.upstream.relay import DecodingRelay, usage_from
from swarmgate.upstream.sse import SSEEvent, encode_event

FINAL = (b"response.completed", b"response.incomplete", b"response.failed")


class EventRelay(DecodingRelay):
    __slots__ = ()

    def _frame(self, events: list[SSEEvent]) -> bytes:
        out = []
        for event in events:
            name = event.event
            if name is not None and name.encode() in FINAL:
                self._final(event.data)
            elif name is None and any(final in event.data for final in FINAL):
                self._final(event.data)  # a server that names its events only in the data
            out.append(encode_event(event.data, name))
        return b"".join(out)

    def _final(self, data: bytes) -> None:
        self.done = True
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if not isinstance(obj, dict) or obj.get("type", "").encode() not in FINAL:
            self.done = False  # the final event's name quoted in some text, not the event
            return
        usage = usage_from(obj.get("response"))
        if usage is not None:
            self.usage = usage
