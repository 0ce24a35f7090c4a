"""What the simulator's tests share besides their fixtures."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

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


def tool_calls_of(chunks: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The tool calls a stream of chat chunks carries, assembled as the SDK does: by
    ``index``, the id, type and name from the first fragment, the arguments concatenated.
    Asserts that each call opens with its id and name and that later fragments carry none."""
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            for part in choice["delta"].get("tool_calls") or []:
                function = part.get("function", {})
                if part["index"] not in calls:
                    assert part["id"].startswith("call_") and part["type"] == "function", part
                    calls[part["index"]] = {
                        "id": part["id"],
                        "name": function["name"],
                        "arguments": function.get("arguments", ""),
                    }
                else:
                    assert "id" not in part and "name" not in function, part
                    calls[part["index"]]["arguments"] += function["arguments"]
    assert sorted(calls) == list(range(len(calls)))
    return [calls[i] for i in sorted(calls)]
