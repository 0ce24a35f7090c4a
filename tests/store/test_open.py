"""``store.open(settings)``: one database, one event bus, the repositories over them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from swarmgate import store as stores
from swarmgate.config import parse_settings
from swarmgate.errors import ConfigError, StoreError
from swarmgate.store.events import LocalBus, RedisBus
from swarmgate.store.migrate import current_revision, head_revision

MODELS = {"m": {"deployments": [{"url": "http://127.0.0.1:9"}]}}


async def test_opens_the_configured_database_and_migrates_it(tmp_path: Path) -> None:
    settings = parse_settings({"models": MODELS}, {}, base_dir=tmp_path)
    store = stores.open(settings)
    try:
        assert isinstance(store.events, LocalBus)
        assert not (tmp_path / "swarmgate.db").exists()  # nothing connects until first used
        await store.migrate()
        assert await current_revision(store.db) == head_revision()
        assert await store.keys.count() == 0
        assert await store.ip_blocks.active(0) == []
        assert (await store.audit.query())[0] == []
        assert (tmp_path / "swarmgate.db").exists()
    finally:
        await store.close()


async def test_an_unreachable_database_fails_on_use_not_on_open() -> None:
    settings = parse_settings(
        {"models": MODELS, "store": {"url": "postgresql://u:p@127.0.0.1:9/none"}}, {}
    )
    store = stores.open(settings)
    try:
        with pytest.raises(StoreError):
            await store.keys.count()
    finally:
        await store.close()
    with pytest.raises(ConfigError):
        stores.open(parse_settings({"models": MODELS, "store": {"url": "mysql://h/d"}}, {}))


@pytest.mark.redis
async def test_with_redis_events_reach_another_store(redis_url: str, tmp_path: Path) -> None:
    raw = {"models": MODELS, "redis": {"url": redis_url}}
    a = stores.open(parse_settings(raw, {}, base_dir=tmp_path))
    b = stores.open(parse_settings(raw, {}, base_dir=tmp_path))
    heard: list[str] = []
    try:
        assert isinstance(a.events, RedisBus)
        b.events.subscribe("swarmgate:test", heard.append)
        await b.events.start()
        await a.events.publish("swarmgate:test", "hello")
        async with asyncio.timeout(5):
            while not heard:
                await asyncio.sleep(0.01)
        assert heard == ["hello"]
    finally:
        await a.close()
        await b.close()
