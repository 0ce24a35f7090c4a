"""Serving until cancelled: ``run_fleet`` in-process and ``main_sim`` as a real process."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import aiohttp
import pytest
import yaml

from swarmgate.errors import ConfigError
from swarmgate.sim import Fleet, parse_fleet_profile, run_fleet, start_fleet

PROFILE = {
    "servers": [{"name": "a", "models": {"m": {"ttft_ms": 1}}}, {"name": "b", "models": {"m": {}}}]
}


async def test_run_fleet_calls_ready_and_stops_when_cancelled() -> None:
    ready: asyncio.Future[Fleet] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run_fleet(parse_fleet_profile(PROFILE), ready=ready.set_result))
    fleet = await asyncio.wait_for(ready, 10)
    assert set(fleet.urls) == {"a", "b"}
    async with aiohttp.ClientSession() as http:
        async with http.get(fleet.urls["a"] + "/health") as r:
            assert r.status == 200
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(aiohttp.ClientConnectionError):
            await http.get(fleet.urls["a"] + "/health")


async def test_a_busy_port_is_a_config_error_and_nothing_is_left_running() -> None:
    first = await start_fleet(
        parse_fleet_profile({"servers": [{"name": "a", "models": {"m": {}}}]})
    )
    try:
        port = int(first.urls["a"].rsplit(":", 1)[1])
        clash = {
            "servers": [
                {"name": "ok", "models": {"m": {}}},
                {"name": "b", "port": port, "models": {"m": {}}},
            ]
        }
        with pytest.raises(ConfigError, match=r"servers\[1\] \(b\): cannot listen"):
            await start_fleet(parse_fleet_profile(clash))
    finally:
        await first.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_main_sim_serves_until_signalled(tmp_path: Path, sig: signal.Signals) -> None:
    config = tmp_path / "fleet.yaml"
    config.write_text(yaml.safe_dump(PROFILE))
    code = f"from swarmgate.sim import main_sim; main_sim({str(config)!r}, testing=True)"
    with subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stderr is not None
            urls = {}
            for _ in range(3):
                line = proc.stdout.readline()
                if match := re.match(r"sim (\w+): (http://127\.0\.0\.1:\d+)", line):
                    urls[match[1]] = match[2]
            assert set(urls) == {"a", "b"}
            with urllib.request.urlopen(urls["b"] + "/health", timeout=5) as r:
                assert r.status == 200
                assert r.headers["X-Sim-Server"] == "b"
            proc.send_signal(sig)
            assert proc.wait(10) == 0
            assert "Traceback" not in proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
