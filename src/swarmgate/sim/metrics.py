"""``GET /metrics`` in Prometheus' text format, with vLLM's metric names and labels.

Written by hand from the engines' counters: a prometheus_client registry is a process-wide
global, and one simulator process runs many servers that must not share their numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from swarmgate.sim.engine import ModelEngine

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_Read = Callable[[ModelEngine], float]

# (name, type, help, read). Counter samples carry the ``_total`` suffix in the name, as
# prometheus_client writes them.
_METRICS: tuple[tuple[str, str, str, _Read], ...] = (
    (
        "vllm:num_requests_running",
        "gauge",
        "Number of requests in model execution batches.",
        lambda e: e.running,
    ),
    (
        "vllm:num_requests_waiting",
        "gauge",
        "Number of requests waiting to be processed.",
        lambda e: e.waiting,
    ),
    (
        "vllm:kv_cache_usage_perc",
        "gauge",
        "KV-cache usage. 1 means 100 percent usage.",
        lambda e: e.kv_cache_usage,
    ),
    (
        "vllm:gpu_cache_usage_perc",
        "gauge",
        "GPU KV-cache usage (the name before vLLM 0.10). 1 means 100 percent usage.",
        lambda e: e.kv_cache_usage,
    ),
    (
        "vllm:prompt_tokens_total",
        "counter",
        "Number of prefill tokens processed.",
        lambda e: e.counters.prompt_tokens,
    ),
    (
        "vllm:generation_tokens_total",
        "counter",
        "Number of generation tokens processed.",
        lambda e: e.counters.generation_tokens,
    ),
    (
        "vllm:prefix_cache_queries_total",
        "counter",
        "Prefix cache queries, in terms of number of queried tokens.",
        lambda e: e.counters.prefix_cache_queries,
    ),
    (
        "vllm:prefix_cache_hits_total",
        "counter",
        "Prefix cache hits, in terms of number of cached tokens.",
        lambda e: e.counters.prefix_cache_hits,
    ),
    (
        "vllm:gpu_prefix_cache_queries_total",
        "counter",
        "GPU prefix cache queries, in terms of number of queried tokens (vLLM's older name).",
        lambda e: e.counters.prefix_cache_queries,
    ),
    (
        "vllm:gpu_prefix_cache_hits_total",
        "counter",
        "GPU prefix cache hits, in terms of number of cached tokens (vLLM's older name).",
        lambda e: e.counters.prefix_cache_hits,
    ),
    (
        "vllm:request_success_total",
        "counter",
        "Count of successfully processed requests.",
        lambda e: e.counters.requests_finished,
    ),
)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(engines: Iterable[ModelEngine]) -> str:
    engines = list(engines)
    lines = []
    for name, kind, help_text, read in _METRICS:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for engine in engines:
            value = float(read(engine))
            lines.append(f'{name}{{model_name="{_label(engine.name)}"}} {value!r}')
    return "\n".join(lines) + "\n"
