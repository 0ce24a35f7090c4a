"""Graceful shutdown: SIGTERM stops accepting, lets in-flight streams finish, exits cleanly."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

import openai

from tests.plugins.processes import Gateway, Sim


def test_sigterm_lets_a_running_stream_finish(
    sim_factory: Callable[..., Sim], gateway_factory: Callable[..., Gateway]
) -> None:
    sim = sim_factory({"m": {"ttft_ms": 1, "tokens_per_second": 20}})
    gw = gateway_factory({"models": {"m": {"deployments": [{"url": sim.url}]}}})
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.admin_key, max_retries=0)
    stream = client.chat.completions.create(
        model="m", max_tokens=20, stream=True, messages=[{"role": "user", "content": "hi"}]
    )
    chunks = [next(iter(stream))]  # the stream is running: 20 tokens take about 1 s
    threading.Timer(0.1, gw.proc.send_signal, (signal.SIGTERM,)).start()
    chunks.extend(stream)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length"
    # uvicorn re-raises the signal after its graceful shutdown: "killed by SIGTERM", cleanly.
    assert gw.proc.wait(10) in (0, -signal.SIGTERM)
    assert "Finished server process" in gw.output()
    assert "Traceback" not in gw.output()
