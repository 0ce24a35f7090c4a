"""The access log: one line per request, written by a thread of its own, never on the path.

``wants`` and ``put`` are all a request pays: a sampling draw (only when sampling below 1) and
an append of its entry to a bounded deque, no formatting and no I/O. Every ``flush_interval`` the
writer thread takes what has queued, renders each entry (the caller's ``render``: a dict) as
a JSON line or a console line, and writes them in one call. A full queue drops lines rather
than hold a request up; how many is written to the log itself when room comes back.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import IO, Any, Generic, TypeVar

import orjson

T = TypeVar("T")
Render = Callable[[T], Mapping[str, Any]]


def json_line(entry: Mapping[str, Any]) -> bytes:
    return orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS)


# The fields a console line shows first, in order; the others follow as name=value.
CONSOLE_HEAD = ("status", "method", "path", "model", "deployment", "latency_ms")


def console_line(entry: Mapping[str, Any]) -> bytes:
    """A short line for people: ``12:00:01.234 200 POST /v1/chat/completions m dep 12.3ms``
    then the rest as ``name=value``."""
    when = entry.get("time")
    stamp = (
        time.strftime("%H:%M:%S", time.localtime(when)) + f".{int(when * 1000) % 1000:03d}"
        if isinstance(when, float)
        else "-"
    )
    head = [stamp]
    for name in CONSOLE_HEAD:
        value = entry.get(name)
        head.append("-" if value is None else f"{value}ms" if name == "latency_ms" else str(value))
    rest = [
        f"{k}={v}"
        for k, v in entry.items()
        if k not in CONSOLE_HEAD and k != "time" and v is not None and v != ""
    ]
    return (" ".join(head + rest) + "\n").encode()


class AccessLog(Generic[T]):
    def __init__(
        self,
        render: Render[T],
        *,
        format: str = "json",
        sample: float = 1.0,
        stream: IO[bytes] | None = None,
        path: str | None = None,
        flush_interval: float = 0.2,
        max_queue: int = 100_000,
    ) -> None:
        self.render = render
        self.line = console_line if format == "console" else json_line
        self.sample = sample
        self.stream = stream if stream is not None else sys.stderr.buffer
        self.path = path  # a file of its own, opened by start and closed by stop
        self.flush_interval = flush_interval
        self.max_queue = max_queue
        self.queue: deque[T] = deque()
        self.dropped = 0
        self.written = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def wants(self, failed: bool = False) -> bool:
        """Whether to log this request (sampled unless ``failed``), before its entry is made."""
        return self.sample >= 1.0 or failed or random.random() < self.sample

    def put(self, entry: T) -> None:
        """Queue ``entry``. Never blocks, never writes."""
        if len(self.queue) >= self.max_queue:
            self.dropped += 1
            return
        self.queue.append(entry)  # deque.append is atomic: the writer pops at the other end

    def start(self) -> None:
        if self._thread is None:
            if self.path is not None:
                self.stream = open(self.path, "ab")  # noqa: SIM115 - closed by stop
            self._thread = threading.Thread(target=self._run, name="access-log", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Write what is queued and stop the writer (at shutdown, after the last request)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.flush()
        if self.path is not None:
            self.stream.close()

    def _run(self) -> None:
        while not self._stop.wait(self.flush_interval):
            self.flush()

    def flush(self) -> None:
        queue, lines = self.queue, []
        render, line = self.render, self.line
        reported = self.dropped
        while queue:  # only this thread pops: a non-empty deque stays non-empty here
            lines.append(line(render(queue.popleft())))
        if reported:
            self.dropped -= reported
            note = {"time": time.time(), "event": "access_log_dropped", "lines": reported}
            lines.append(line(note))
        if lines:
            self.stream.write(b"".join(lines))
            self.stream.flush()
            self.written += len(lines)
