"""Ollama's pull API (``POST /api/pull``, streamed JSON lines): how a model is downloaded onto
an Ollama server. It goes through the ``Transport`` seam, so its errors are already ours
(``UpstreamUnreachable``, ``UpstreamError``, ``UpstreamBroken``) and the memory twin serves
its tests of logic; the simulator speaks it too (``sim/pull.py``) for tests of the seam.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson

from swarmgate.errors import UpstreamError
from swarmgate.types import Origin, Transport

MAX_LINE = 64 * 1024  # a progress line is ~200 bytes; anything longer is not Ollama


@dataclass(frozen=True, slots=True)
class PullProgress:
    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None

    @property
    def done(self) -> bool:
        return self.status == "success"


def parse_line(line: bytes) -> PullProgress:
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise UpstreamError("the Ollama server sent a progress line that is not JSON") from None
    if not isinstance(obj, dict):
        raise UpstreamError("the Ollama server sent a progress line that is not an object")
    if isinstance(obj.get("error"), str):
        raise UpstreamError(f"the Ollama server refused the pull: {obj['error']}")
    total, completed = obj.get("total"), obj.get("completed")
    return PullProgress(
        str(obj.get("status", "")),
        obj.get("digest") if isinstance(obj.get("digest"), str) else None,
        total if isinstance(total, int) else None,
        completed if isinstance(completed, int) else None,
    )


async def pull(transport: Transport, origin: Origin, model: str) -> AsyncIterator[PullProgress]:
    """Each progress line of pulling ``model``; raises ``UpstreamError`` on a refusal."""
    body = orjson.dumps({"model": model, "stream": True})
    response = await transport.send(origin, "/api/pull", body, {"content-type": "application/json"})
    try:
        if response.status != 200:
            data = await response.read()
            raise UpstreamError(
                f"the Ollama server answered HTTP {response.status}: {data[:200]!r}"
            )
        pending = b""
        async for chunk in response.chunks():
            pending += chunk
            if len(pending) > MAX_LINE and b"\n" not in pending:
                raise UpstreamError("the Ollama server sent an overlong progress line")
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line.strip():
                    yield parse_line(line)
        if pending.strip():
            yield parse_line(pending)
    finally:
        response.close()
