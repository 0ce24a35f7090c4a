"""Several workers without Redis would each count limits alone: refused at start."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from swarmgate.config import parse_settings, worker_problem
from tests.plugins.processes import SWARMGATE

MODELS = {"m": {"deployments": [{"url": "http://127.0.0.1:9"}]}}


def test_serve_refuses_workers_without_redis_while_limits_are_on(tmp_path: Path) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text(yaml.safe_dump({"models": MODELS, "store": {"url": "sqlite+aiosqlite:///x"}}))
    run = subprocess.run(
        [*SWARMGATE, "serve", "--config", str(config), "--workers", "3"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert "3 workers without redis.url" in run.stderr and "limits.enabled: false" in run.stderr
    assert not (tmp_path / "x").exists()  # refused before touching the store


def test_one_worker_redis_or_limits_off_are_accepted() -> None:
    settings = parse_settings({"models": MODELS})
    assert worker_problem(settings, 1) is None
    assert worker_problem(settings, 2) is not None
    with_redis = parse_settings({"models": MODELS, "redis": {"url": "redis://127.0.0.1:1/0"}})
    assert worker_problem(with_redis, 4) is None
    off = parse_settings({"models": MODELS, "limits": {"enabled": False}})
    assert worker_problem(off, 4) is None
