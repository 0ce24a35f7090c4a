"""Server-sent events on the streaming hot path: an incremental decoder and the encoders.

The gateway forwards an upstream's ``text/event-stream`` to the client event by event. The
decoder splits the byte stream into events as the chunks arrive and never waits for more than
the event in progress; the encoders write the events the gateway emits itself.

Why hand-written rather than a library (httpx-sse, sseclient, aiohttp-sse-client): they decode
text line by line in Python, or hand back ``str``; this runs once per upstream chunk of every
stream, works on raw ``bytes`` so that valid data goes back out as the same bytes without a
decode/encode round trip, splits lines with C-level ``bytes.split``/``replace`` (no per-byte
Python loop), and keeps exact WHATWG semantics (``html.spec.whatwg.org``, "Server-sent events",
interpreting an event stream) including a ``\\r\\n`` cut between two chunks.

Where this departs from WHATWG, on purpose:

* ``close()`` at EOF treats an unterminated last line as complete and dispatches the pending
  event if it has data; WHATWG discards it. A clean EOF means the upstream finished writing what
  it meant to send, and some servers end with ``data: [DONE]`` and no blank line. Call
  ``close()`` only on a clean EOF: after a broken connection the last line may be cut short.
* ``retry`` is carried on the event in whose block it appeared (WHATWG applies it to the
  connection); a block without data lines is not dispatched, so its ``retry`` is dropped.
* ``id`` follows WHATWG: the last event ID persists across events until another ``id`` field
  changes it, even one in a block without data; an empty ``id`` clears it (``None``).

Unknown fields are ignored, as WHATWG says. Note that llama.cpp's ``llama-server`` reports a
mid-stream failure as an ``error: {...}`` field, which is therefore never an event here: the
caller sees the stream end without ``[DONE]`` or a ``finish_reason``.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from swarmgate.errors import UpstreamError

DONE: bytes = b"data: [DONE]\n\n"
DEFAULT_MAX_EVENT_BYTES = 8 * 1024 * 1024

_BOM = b"\xef\xbb\xbf"
_LF = 0x0A
_COLON = 0x3A


@dataclass(frozen=True, slots=True)
class SSEEvent:
    data: bytes  # the data lines joined with b"\n" (WHATWG), always valid UTF-8
    event: str | None = None
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Feed it the upstream's chunks; it returns each event as soon as its blank line arrives.

    Memory is bounded by ``max_event_bytes``: the data of the event in progress plus an
    unterminated line may not exceed it, else ``UpstreamError`` is raised and the decoder is
    left empty (the stream is beyond saving).
    """

    __slots__ = (
        "_at_start",
        "_data",
        "_event",
        "_last_id",
        "_max",
        "_pending",
        "_pending_len",
        "_retry",
        "_size",
        "_skip_lf",
    )

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._max = max_event_bytes
        self._last_id: str | None = None
        self._reset()

    def _reset(self) -> None:
        self._at_start = True  # a BOM is dropped only at the very start of the stream
        self._skip_lf = False  # the last chunk ended with \r: a \n opening the next one is its pair
        self._pending: list[bytes] = []  # pieces of the unterminated line, joined once it ends
        self._pending_len = 0
        self._data: list[bytes] = []
        self._size = 0
        self._event: str | None = None
        self._retry: int | None = None

    @property
    def buffered(self) -> int:
        """Bytes held awaiting a line end."""
        return self._pending_len

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Return the events completed by ``chunk`` (often exactly one, possibly none)."""
        if not chunk:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if chunk[0] == _LF:
                chunk = chunk[1:]
        if self._at_start:
            chunk = self._drop_bom(chunk)
        if b"\r" in chunk:
            # \r ends a line now; the event it may complete must not wait for the next chunk,
            # so remember to swallow a \n that opens the next chunk instead.
            self._skip_lf = chunk.endswith(b"\r")
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = chunk.split(b"\n")
        tail = lines.pop()
        if not lines:
            if tail:
                self._hold(tail)
            return []
        if self._pending:
            self._pending.append(lines[0])
            lines[0] = b"".join(self._pending)
            self._pending = []
            self._pending_len = 0
        events = self._process(lines)
        if tail:
            self._hold(tail)
        return events

    def close(self) -> list[SSEEvent]:
        """Flush at a clean EOF (see the module docstring) and make the decoder reusable."""
        # A partial BOM still held at the start is no BOM: it ends up an unknown field.
        lines = [b"".join(self._pending)] if self._pending else []
        events = self._process(lines)
        if self._data:
            events.append(self._dispatch())
        self._reset()
        return events

    def _drop_bom(self, chunk: bytes) -> bytes:
        if self._pending:
            chunk = b"".join(self._pending) + chunk
            self._pending = []
            self._pending_len = 0
        if len(chunk) < len(_BOM) and _BOM.startswith(chunk):
            self._hold(chunk)  # cannot tell yet whether this is a BOM
            return b""
        self._at_start = False
        return chunk.removeprefix(_BOM)

    def _hold(self, piece: bytes) -> None:
        self._pending.append(piece)
        self._pending_len += len(piece)
        if self._pending_len + self._size > self._max:
            self._too_large()

    def _process(self, lines: list[bytes]) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        data = self._data
        for line in lines:
            if not line:
                if data:
                    events.append(self._dispatch())
                else:
                    self._event = None
                    self._retry = None
            elif line.startswith(b"data:"):
                value = line[6:] if line.startswith(b" ", 5) else line[5:]
                self._size += len(value)
                if self._size > self._max:
                    self._too_large()
                data.append(value)
            elif line[0] != _COLON:
                self._field(line)
        return events

    def _field(self, line: bytes) -> None:
        """Any field but ``data: ...`` (the fast path handles that one)."""
        name, colon, value = line.partition(b":")
        if colon and value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            self._data.append(value)  # "data" alone: a data line with an empty value
        elif name == b"event":
            self._event = value.decode("utf-8", "replace") or None
        elif name == b"id":
            if b"\x00" not in value:
                self._last_id = value.decode("utf-8", "replace") or None
        elif name == b"retry" and value.isdigit():  # bytes.isdigit: ASCII digits only
            self._retry = int(value)

    def _dispatch(self) -> SSEEvent:
        data = b"\n".join(self._data)  # one line: the same object, no copy
        self._data.clear()
        self._size = 0
        if not data.isascii():
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                # WHATWG decodes the stream with U+FFFD replacement; clients must get valid UTF-8.
                data = data.decode("utf-8", "replace").encode("utf-8")
        event = SSEEvent(data, self._event, self._last_id, self._retry)
        self._event = None
        self._retry = None
        return event

    def _too_large(self) -> None:
        self._reset()
        raise UpstreamError("upstream event too large")


def encode_event(data: bytes, event: str | None = None) -> bytes:
    """b"data: ...\\n\\n"; multi-line data becomes several data: lines.

    Lines of ``data`` may end with ``\\n``, ``\\r\\n`` or ``\\r``; a decoder joins them back with
    ``\\n``, so data without ``\\r`` round-trips exactly.
    """
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    if b"\n" in data:
        data = data.replace(b"\n", b"\ndata: ")
    if not event:
        return b"data: " + data + b"\n\n"
    if "\n" in event or "\r" in event:
        raise ValueError(f"an SSE event name cannot contain a line break: {event!r}")
    return b"".join((b"event: ", event.encode("utf-8"), b"\ndata: ", data, b"\n\n"))


def encode_json_event(obj: object) -> bytes:
    """A data event holding ``obj`` as JSON (orjson escapes line breaks: always one line)."""
    return b"".join((b"data: ", orjson.dumps(obj), b"\n\n"))
