"""Ollama's pull API on the simulator: ``POST /api/pull`` with ``{"model", "stream"}``.

Streams JSON lines as Ollama does (``pulling manifest``, one ``pulling <digest>`` line per
progress step with ``digest``, ``total`` and ``completed``, ``verifying sha256 digest``,
``writing manifest``, ``success``), so the gateway's model downloads can be driven and tested
without fetching gigabytes. A model named ``missing*`` fails as an unknown one does on Ollama:
an ``{"error": ...}`` line.
"""

from __future__ import annotations

import asyncio
import hashlib

import orjson
from aiohttp import web

SIZE = 4 * 1024 * 1024  # the simulated layer's bytes
STEPS = 4
STEP_SECONDS = 0.05


async def pull(request: web.Request) -> web.StreamResponse:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return web.json_response({"error": "invalid JSON"}, status=400)
    model = body.get("model") if isinstance(body, dict) else None
    if not isinstance(model, str) or not model:
        return web.json_response({"error": "model is required"}, status=400)
    if body.get("stream") is False:
        await asyncio.sleep(STEP_SECONDS * STEPS)
        return web.json_response({"status": "success"})
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)

    async def line(obj: dict[str, object]) -> None:
        await response.write(orjson.dumps(obj) + b"\n")

    await line({"status": "pulling manifest"})
    if model.startswith("missing"):
        await line({"error": "pull model manifest: file does not exist"})
        await response.write_eof()
        return response
    digest = "sha256:" + hashlib.sha256(model.encode()).hexdigest()
    for step in range(1, STEPS + 1):
        await asyncio.sleep(STEP_SECONDS)
        progress = {"status": f"pulling {digest[7:19]}", "digest": digest, "total": SIZE}
        await line({**progress, "completed": SIZE * step // STEPS})
    for status in ("verifying sha256 digest", "writing manifest", "success"):
        await line({"status": status})
    await response.write_eof()
    return response
