"""The lifespan protocol: the server learns whether start-up and shutdown worked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from swarmgate.api.app import Gateway
from swarmgate.config import parse_settings


def _gateway(tmp_path: Path) -> Gateway:
    raw = {
        "models": {"m": {"deployments": [{"url": "http://127.0.0.1:9"}]}},
        "store": {"url": f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}"},
        "audit": {"spool_path": str(tmp_path / "audit.spool")},
        "auth": {"secret": "s" * 40},
    }
    return Gateway(parse_settings(raw, {}))


async def _run(gw: Gateway) -> list[dict[str, Any]]:
    inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return inbox.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await gw({"type": "lifespan"}, receive, send)
    return sent


async def test_startup_and_shutdown_complete(tmp_path: Path) -> None:
    sent = await _run(_gateway(tmp_path))
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


async def test_a_failing_shutdown_is_reported_as_failed(tmp_path: Path) -> None:
    gw = _gateway(tmp_path)
    real_shutdown = gw.shutdown

    async def broken() -> None:
        await real_shutdown()
        raise RuntimeError("the audit queue could not be flushed")

    gw.shutdown = broken  # type: ignore[method-assign]
    sent = await _run(gw)
    assert sent[-1] == {
        "type": "lifespan.shutdown.failed",
        "message": "the audit queue could not be flushed",
    }


async def test_startup_collects_the_young_generation_less_often(tmp_path: Path) -> None:
    import gc

    from swarmgate.api.app import YOUNG_GC_THRESHOLD

    before = gc.get_threshold()
    gc.set_threshold(700, before[1], before[2])
    try:
        await _run(_gateway(tmp_path))
        assert gc.get_threshold() == (YOUNG_GC_THRESHOLD, before[1], before[2])
        assert YOUNG_GC_THRESHOLD > 700
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
