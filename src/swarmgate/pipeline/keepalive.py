"""SSE comment keep-alives while a stream waits for its first chunk (opt-in per model).

A long prompt can take a deployment longer to prefill than a load balancer in front of the
gateway lets a connection sit idle (60 s on AWS's, for one), and the stream is cut before its
first token. With ``stream_keepalive`` set, a stream that has had no chunk for that many
seconds gets its head (200, ``text/event-stream``) and then an SSE comment line
(``: keep-alive``) every interval until the first chunk: clients and SDKs ignore comments.

The price, and why it is off by default: once the head has gone out there is no HTTP status
left to answer with. A failure after a keep-alive (the deployment answers 5xx, times out) is an
SSE error event, as for a stream cut mid-way, and the request is never retried on another
deployment.

One task per stream that opted in, sending only while the request's own task waits on the
upstream: ``stop`` cancels it and waits for it before the request's task sends anything, so the
two never send at once.
"""

from __future__ import annotations

import asyncio
from typing import Any

from swarmgate.types import Send

COMMENT = b": keep-alive\n\n"


class KeepAlive:
    __slots__ = ("_interval", "_send", "_start", "_task", "started")

    def __init__(self, send: Send, start: dict[str, Any], interval: float) -> None:
        self._send = send
        self._start = start
        self._interval = interval
        self.started = False  # the head went out: no HTTP status can follow
        self._task = asyncio.get_running_loop().create_task(self._run())
        self._task.add_done_callback(_retrieved)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            if not self.started:
                # Set first: a send interrupted by ``stop`` may still have written the head.
                self.started = True
                await self._send(self._start)
            await self._send({"type": "http.response.body", "body": COMMENT, "more_body": True})

    async def stop(self) -> bool:
        """No more keep-alives; whether the head went out. Waits until the task has ended (so
        that the request's task sends alone from then on) without ever swallowing the
        request's own cancellation (``asyncio.wait`` lets it through). A send that failed in
        the task (the client gone) shows on the request's own next send."""
        task = self._task
        if not task.done():
            task.cancel()
            await asyncio.wait((task,))
        return self.started


def _retrieved(task: asyncio.Task[None]) -> None:
    """Its error, read so that asyncio does not log it: the request's own sends report it."""
    if not task.cancelled():
        task.exception()
