"""Seed 004's and seed 002's performance checks, reproduced against swarmgate on this machine.

Runs seed 004's own configuration (examples/unified-api-gateway.yaml, its endpoints pointed at a
simulated fleet through the seed's environment variables) and checks, as the seeds word them:

- seed 004, gateway latency: 20 sequential chat requests; overhead over calling the model
  server directly < 100 ms (median against median);
- seed 004, throughput: ``ab -n 200 -c 20`` equivalent (200 requests, 20 at a time, a Python
  load loop) > 50 requests per second;
- seed 004, memory: the gateway's process tree < 2 GB RSS;
- seed 002, API response time: p99 of 200 ``GET /v1/models`` < 200 ms.

Prints PASS/FAIL lines and exits 1 on a failure. Run it with ``.venv/bin/python
bench/seed_checks.py [--workers N]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import yaml
from processes import REPO, WORK, Service, running

from swarmgate.seedconfig import endpoint_variable

MODELS = ("mixtral-8x7b", "hermes-2", "openchat-3.5", "phi-3-mini")
PAYLOAD = {"messages": [{"role": "user", "content": "Gateway test"}], "max_tokens": 30}
SWARMGATE = [sys.executable, "-m", "swarmgate.cli"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(url: str, body: dict[str, object]) -> float:
    """Seconds to a 200; a refusal (e.g. 503 past a deployment's max_concurrent) is -1, as
    ``ab`` counts it under "Non-2xx responses"."""
    started = time.perf_counter()
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        exc.close()
        return -1.0
    return time.perf_counter() - started


def _get(url: str) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as response:
        response.read()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1, help="gateway workers (seed: 4)")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    ports = {model: _free_port() for model in MODELS}
    profile = WORK / "seed-fleet.yaml"
    servers = [
        {"name": m, "port": p, "models": {m: {"ttft_ms": 20, "tokens_per_second": 1000}}}
        for m, p in ports.items()
    ]
    profile.write_text(yaml.safe_dump({"servers": servers}))
    config = WORK / "unified-api-gateway.yaml"
    config.write_text((REPO / "examples" / "unified-api-gateway.yaml").read_text())
    gw_port = _free_port()
    env = {"API_GATEWAY_PORT": str(gw_port), "API_GATEWAY_WORKERS": str(args.workers)}
    env |= {endpoint_variable(m): f"http://127.0.0.1:{p}" for m, p in ports.items()}
    sim = Service("seed-sim", [*SWARMGATE, "sim", "--config", str(profile)], ports["phi-3-mini"])
    gateway = Service(
        "seed-gateway", [*SWARMGATE, "serve", "--config", str(config)], gw_port, env=env
    )
    results: list[tuple[str, bool, str]] = []
    with running(sim), running(gateway) as gw:
        chat = f"{gw.url}/v1/chat/completions"
        direct = f"http://127.0.0.1:{ports['mixtral-8x7b']}/v1/chat/completions"
        for _ in range(5):  # warm-up: connections, caches
            _post(chat, PAYLOAD)
        through = [_post(chat, PAYLOAD) for _ in range(20)]
        alone = [_post(direct, {**PAYLOAD, "model": "mixtral-8x7b"}) for _ in range(20)]
        overhead = (statistics.median(through) - statistics.median(alone)) * 1000
        results.append(("seed 004 gateway overhead < 100 ms", overhead < 100, f"{overhead:.1f} ms"))
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=20) as pool:
            refused = sum(t < 0 for t in pool.map(lambda _: _post(chat, PAYLOAD), range(200)))
        rps = (200 - refused) / (time.perf_counter() - started)
        results.append(
            (
                "seed 004 throughput > 50 rps, none refused (200 requests, 20 at a time)",
                rps > 50 and refused == 0,
                f"{rps:.0f} rps answered, {refused} refused",
            )
        )
        rss = gw.rss_bytes()
        results.append(("seed 004 memory < 2 GB", rss < 2 * 1024**3, f"{rss / 1024**2:.0f} MB RSS"))
        with ThreadPoolExecutor(max_workers=20) as pool:
            times = sorted(pool.map(lambda _: _get(f"{gw.url}/v1/models"), range(200)))
        p99 = times[int(len(times) * 0.99) - 1] * 1000
        results.append(
            ("seed 002 API response p99 < 200 ms (GET /v1/models)", p99 < 200, f"{p99:.1f} ms")
        )
    for name, ok, value in results:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {value}")
    return 0 if all(ok for _, ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
