"""``GET /metrics`` in Prometheus' text format, with the names a real server of the profile's
kind exports: vLLM's (the default), SGLang's or llama.cpp's.

Written by hand from the engines' counters: a prometheus_client registry is a process-wide
global, and one simulator process runs many servers that must not share their numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from swarmgate.sim.engine import ModelEngine
from swarmgate.sim.profile import MetricsKind

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_Read = Callable[[ModelEngine], float]
_Metric = tuple[str, str, str, _Read]  # (name, type, help, read)


def _hit_rate(e: ModelEngine) -> float:
    queries = e.counters.prefix_cache_queries
    return e.counters.prefix_cache_hits / queries if queries else 0.0


# Counter samples carry the ``_total`` suffix in the name, as prometheus_client writes them.
_VLLM: tuple[_Metric, ...] = (
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

_SGLANG: tuple[_Metric, ...] = (
    ("sglang:num_running_reqs", "gauge", "The number of running requests.", lambda e: e.running),
    (
        "sglang:num_queue_reqs",
        "gauge",
        "The number of requests in the waiting queue.",
        lambda e: e.waiting,
    ),
    ("sglang:token_usage", "gauge", "The token usage.", lambda e: e.kv_cache_usage),
    ("sglang:cache_hit_rate", "gauge", "The prefix cache hit rate.", _hit_rate),
    (
        "sglang:prompt_tokens_total",
        "counter",
        "Number of prefill tokens processed.",
        lambda e: e.counters.prompt_tokens,
    ),
    (
        "sglang:generation_tokens_total",
        "counter",
        "Number of generation tokens processed.",
        lambda e: e.counters.generation_tokens,
    ),
    (
        "sglang:cached_tokens_total",
        "counter",
        "Number of cached prompt tokens.",
        lambda e: e.counters.prefix_cache_hits,
    ),
    (
        "sglang:num_requests_total",
        "counter",
        "Number of requests processed.",
        lambda e: e.counters.requests_finished,
    ),
)

# llama.cpp's server: no labels (it serves one model), no KV-cache gauge (current builds
# dropped ``kv_cache_usage_ratio``); its prompt counter counts the tokens it evaluated.
_LLAMACPP: tuple[_Metric, ...] = (
    (
        "llamacpp:prompt_tokens_total",
        "counter",
        "Number of prompt tokens processed.",
        lambda e: e.counters.prompt_tokens - e.counters.prefix_cache_hits,
    ),
    (
        "llamacpp:tokens_predicted_total",
        "counter",
        "Number of generation tokens processed.",
        lambda e: e.counters.generation_tokens,
    ),
    (
        "llamacpp:requests_processing",
        "gauge",
        "Number of requests processing.",
        lambda e: e.running,
    ),
    (
        "llamacpp:requests_deferred",
        "gauge",
        "Number of requests deferred.",
        lambda e: e.waiting,
    ),
)

_KINDS: dict[MetricsKind, tuple[_Metric, ...]] = {
    "vllm": _VLLM,
    "sglang": _SGLANG,
    "llamacpp": _LLAMACPP,
}


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(engines: Iterable[ModelEngine], kind: MetricsKind = "vllm") -> str:
    engines = list(engines)
    labelled = kind != "llamacpp"
    lines = []
    for name, type_, help_text, read in _KINDS[kind]:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {type_}")
        for engine in engines:
            value = float(read(engine))
            labels = f'{{model_name="{_label(engine.name)}"}}' if labelled else ""
            lines.append(f"{name}{labels} {value!r}")
    return "\n".join(lines) + "\n"
