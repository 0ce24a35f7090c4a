"""Pacing one SSE stream: token *i* is due ``i / tokens_per_second`` after the first.

Each wake-up writes every token that has come due in one ``write``: when the event loop is
busy (a thousand streams in one process) tokens coalesce into fewer writes instead of the
stream falling behind its rate, so throughput in tokens per second holds under load.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from aiohttp import web

from swarmgate.sim.engine import ModelEngine
from swarmgate.sim.tools import ToolCall, pieces
from swarmgate.sim.wire import DONE, ChunkFormat
from swarmgate.types import Usage


def abort(request: web.Request) -> None:
    """Drop the connection at once: no terminating chunk, no further bytes."""
    if request.transport is not None:
        request.transport.abort()


async def stream_tokens(
    request: web.Request,
    engine: ModelEngine,
    fmt: ChunkFormat,
    tokens: list[str],
    finish_reason: str,
    usage: Usage,
    cached_tokens: int | None,
    reset_after: int | None,
) -> web.StreamResponse:
    """Send ``tokens`` as content chunks, after the role chunk of a chat stream."""
    last = len(tokens) - 1

    def event(i: int) -> bytes:
        return fmt.token(tokens[i], finish_reason if i == last else None)

    return await stream_events(
        request,
        engine,
        fmt,
        event,
        len(tokens),
        usage,
        cached_tokens,
        reset_after,
        opening=[fmt.role()] if fmt.chat else [],
    )


async def stream_tool_calls(
    request: web.Request,
    engine: ModelEngine,
    fmt: ChunkFormat,
    calls: Sequence[ToolCall],
    finish_reason: str,
    usage: Usage,
    cached_tokens: int | None,
    reset_after: int | None,
) -> web.StreamResponse:
    """Send tool calls as OpenAI does: each call's id and name (one token), then its
    arguments in pieces (a token each), then an empty delta with the finish reason."""
    events = []
    for i, call in enumerate(calls):
        events.append(fmt.tool_call(i, call))
        events.extend(fmt.arguments(i, piece) for piece in pieces(call.arguments))
    return await stream_events(
        request,
        engine,
        fmt,
        events.__getitem__,
        len(events),
        usage,
        cached_tokens,
        reset_after,
        closing=[fmt.finish(finish_reason)],
    )


async def stream_events(
    request: web.Request,
    engine: ModelEngine,
    fmt: ChunkFormat,
    event: Callable[[int], bytes],
    count: int,
    usage: Usage,
    cached_tokens: int | None,
    reset_after: int | None,
    *,
    opening: Sequence[bytes] = (),
    closing: Sequence[bytes] = (),
) -> web.StreamResponse:
    """Send ``count`` tokens, token *i* as the SSE event ``event(i)``, the first at once
    (prefill is done): after the ``opening`` events, before the ``closing`` ones, the usage
    chunk if asked for, and ``[DONE]``.

    ``reset_after``: abort the TCP connection after that many events, with no terminating
    chunk, as a crashed model server would.
    """
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    loop = asyncio.get_running_loop()
    interval = 1.0 / engine.profile.tokens_per_second
    pending = list(opening)
    budget = reset_after
    start = loop.time()
    sent = 0
    try:
        while True:
            due = min(count, int((loop.time() - start) / interval) + 1)
            pending.extend(event(i) for i in range(sent, due))
            engine.counters.generation_tokens += due - sent
            sent = due
            if sent == count:
                pending.extend(closing)
                if fmt.include_usage:
                    pending.append(fmt.usage(usage, cached_tokens))
                pending.append(DONE)
            if budget is not None and len(pending) >= budget:
                await response.write(b"".join(pending[:budget]))
                abort(request)
                return response
            if budget is not None:
                budget -= len(pending)
            await response.write(b"".join(pending))
            pending.clear()
            if sent == count:
                break
            await asyncio.sleep(start + sent * interval - loop.time())
    except ConnectionResetError:
        return response  # the client went away; nothing left to tell it
    engine.counters.requests_finished += 1
    return response
