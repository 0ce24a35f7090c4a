"""Several worker processes: /metrics, served by any one of them, counts every worker's requests."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable

import openai

from tests.plugins.processes import Gateway, Sim


def test_metrics_sum_over_workers(
    sim_factory: Callable[..., Sim], gateway_factory: Callable[..., Gateway]
) -> None:
    sim = sim_factory({"m": {"ttft_ms": 1, "tokens_per_second": 2000}})
    # Without Redis, several workers are refused while limits are on (they would count alone).
    gw = gateway_factory(
        {"models": {"m": {"deployments": [{"url": sim.url}]}}, "limits": {"enabled": False}},
        args=("--workers", "2"),
    )
    n = 24
    for _ in range(n):
        # A new connection per request, so that both workers get some.
        with openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.admin_key, max_retries=0) as c:
            c.chat.completions.create(
                model="m", max_tokens=2, messages=[{"role": "user", "content": "hi"}]
            )
    # Each worker writes its counts to the shared files at least every second.
    deadline = time.monotonic() + 3
    while True:
        with urllib.request.urlopen(gw.url + "/metrics", timeout=5) as r:
            text = r.read().decode()
        line = next(x for x in text.splitlines() if x.startswith("inference_requests_total{"))
        if float(line.rsplit(" ", 1)[1]) == n or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert 'model="m"' in line and float(line.rsplit(" ", 1)[1]) == n
