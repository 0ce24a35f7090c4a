"""``Load``: what a deployment's own ``/metrics`` said about it, and when.

A model server knows what the gateway cannot see: requests other clients sent it, its queue,
how full its KV cache is. ``parse`` reads those figures from Prometheus' text format under
the names vLLM, SGLang and llama.cpp's server export them; ``Load`` keeps them, frozen, with
the time they were read, so a balancer can weigh them by their age, and ``queue_full`` decides
from them whether a deployment's queue is too deep to send it more. Nothing here does I/O.
"""

from __future__ import annotations

from typing import NamedTuple

# Each engine's names for the same three figures (docs/routing-aware.md). vLLM renamed its
# KV gauge in 0.10; both are read. llama.cpp exports no KV gauge in current builds.
WAITING = frozenset(
    {"vllm:num_requests_waiting", "sglang:num_queue_reqs", "llamacpp:requests_deferred"}
)
RUNNING = frozenset(
    {"vllm:num_requests_running", "sglang:num_running_reqs", "llamacpp:requests_processing"}
)
KV_USAGE = frozenset(
    {
        "vllm:kv_cache_usage_perc",
        "vllm:gpu_cache_usage_perc",
        "sglang:token_usage",
        "llamacpp:kv_cache_usage_ratio",
    }
)


class Load(NamedTuple):
    """A deployment's figures as of monotonic time ``at``. ``kv_usage`` (0 to 1) is None when
    the server exports no KV gauge."""

    at: float
    waiting: float
    running: float
    kv_usage: float | None = None

    def age(self, now: float) -> float:
        return now - self.at


def queue_full(load: Load | None, max_waiting: int | None, now: float, stale_after: float) -> bool:
    """Whether a deployment counts as full by its own queue: it has a ``max_waiting``, and
    figures younger than ``stale_after`` show at least that many requests waiting in it.
    Figures that old, or none, never count: a server that stopped answering its scrape
    is not held full on its last reading."""
    return (
        max_waiting is not None
        and load is not None
        and now - load.at < stale_after
        and load.waiting >= max_waiting
    )


def parse(text: str, at: float) -> Load | None:
    """The figures in an exposition ``text`` (summed over label sets: one server may serve
    several models; the fullest KV cache counts); None if it has none of them, so that a
    ``/metrics`` of some other kind is not read as an idle server.

    Hand-written rather than ``prometheus_client.parser``: this reads the few lines it needs
    and skips the rest (histograms make up most of a vLLM exposition) without building them.
    """
    waiting = running = 0.0
    kv: float | None = None
    found = False
    for line in text.splitlines():
        if not line or line[0] == "#" or line[0] not in "vsl":  # vllm:, sglang:, llamacpp:
            continue
        end = line.find("{")
        if end < 0:
            end = line.find(" ")
        name = line[:end]
        if name in WAITING:
            which = 0
        elif name in RUNNING:
            which = 1
        elif name in KV_USAGE:
            which = 2
        else:
            continue
        value = _value(line)
        if value is None:
            continue
        found = True
        if which == 0:
            waiting += value
        elif which == 1:
            running += value
        else:
            kv = value if kv is None else max(kv, value)
    if not found:
        return None
    return Load(at, waiting, running, kv)


def _value(line: str) -> float | None:
    # The sample's value follows the labels (whose quoted values may hold spaces); an optional
    # timestamp may follow it.
    rest = line[line.rfind("}") + 1 :] if "}" in line else line[line.find(" ") :]
    fields = rest.split()
    if not fields:
        return None
    try:
        value = float(fields[0])
    except ValueError:
        return None
    if value != value or value < 0 or value == float("inf"):  # NaN, negative, +Inf
        return None
    return value
