"""What the simulator's tests share besides their fixtures."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

# Fast defaults so that tests spend their time on behaviour, not on simulated prefill.
FAST = {"ttft_ms": 5, "tokens_per_second": 2000}

StartSim = Callable[..., Awaitable[str]]


def metric(text: str, name: str, model: str | None) -> float:
    """One sample from Prometheus text, e.g. ``metric(t, "vllm:num_requests_running", "m")``;
    ``model=None`` for an unlabelled sample (llama.cpp's)."""
    prefix = f"{name} " if model is None else f'{name}{{model_name="{model}"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    raise AssertionError(f"{prefix!r} not in /metrics")
