"""The Ollama pull adapter against the simulator's ``/api/pull`` (a real HTTP server) and
against the memory twin for refusals."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from swarmgate.errors import UpstreamError
from swarmgate.types import Origin
from swarmgate.upstream.memory import MemoryResponse, MemoryTransport, SentRequest
from swarmgate.upstream.ollama import PullProgress, pull
from swarmgate.upstream.transport import HttpTransport
from tests.plugins.processes import Sim


async def test_pulls_with_streamed_progress_from_the_simulator(
    sim_factory: Callable[..., Sim],
) -> None:
    sim = sim_factory({"m": {"ttft_ms": 1}})
    transport = HttpTransport()
    try:
        lines = [p async for p in pull(transport, Origin(sim.url), "llama3.2:1b")]
    finally:
        await transport.close()
    assert lines[0].status == "pulling manifest"
    progress = [p for p in lines if p.total]
    assert [p.completed for p in progress] == sorted(p.completed or 0 for p in progress)
    assert progress[-1].completed == progress[-1].total and progress[-1].digest
    assert lines[-1].done


async def test_an_unknown_model_is_an_upstream_error(sim_factory: Callable[..., Sim]) -> None:
    sim = sim_factory({"m": {"ttft_ms": 1}})
    transport = HttpTransport()
    try:
        with pytest.raises(UpstreamError, match="file does not exist"):
            [p async for p in pull(transport, Origin(sim.url), "missing-model")]
    finally:
        await transport.close()


async def test_lines_split_across_chunks_are_joined() -> None:
    async def handler(sent: SentRequest) -> MemoryResponse:
        assert sent.path == "/api/pull" and sent.json() == {"model": "x", "stream": True}
        return MemoryResponse.sse(b'{"status":"pul', b'ling"}\n{"status":"success"}')

    lines = [p async for p in pull(MemoryTransport(handler), Origin("http://o"), "x")]
    assert lines == [PullProgress("pulling"), PullProgress("success")]
