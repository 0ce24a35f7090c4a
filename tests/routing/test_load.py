"""Reading a model server's figures from its exposition, under each engine's names."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swarmgate.routing.load import Load, parse
from swarmgate.sim.engine import ModelCounters, ModelEngine
from swarmgate.sim.metrics import render


@dataclass
class Engine:  # what render() reads of a ModelEngine
    name: str
    running: int
    waiting: int
    kv_cache_usage: float
    counters: ModelCounters = field(default_factory=ModelCounters)


def _render(kind: Any, *engines: Engine) -> str:
    return render(cast("list[ModelEngine]", list(engines)), kind)


@pytest.mark.parametrize("kind", ["vllm", "sglang"])
def test_the_simulators_vllm_and_sglang_pages_give_all_three_figures(kind: str) -> None:
    load = parse(_render(kind, Engine("m", 3, 7, 0.25)), at=5.0)
    assert load == Load(5.0, waiting=7, running=3, kv_usage=0.25)


def test_llamacpp_has_no_kv_gauge() -> None:
    assert parse(_render("llamacpp", Engine("m", 2, 1, 0.9)), at=0.0) == Load(0.0, 1, 2, None)


# llama.cpp's own server (xllamacpp 2026.10.11549, the tests' llama_server) with both of its
# slots busy and six requests waiting, as it exposed itself; the gauges' neighbours trimmed.
LLAMA_SERVER_PAGE = """\
# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed, excluding cached tokens
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 1320
# HELP llamacpp:tokens_predicted_total Number of generation tokens processed
# TYPE llamacpp:tokens_predicted_total counter
llamacpp:tokens_predicted_total 9440
# HELP llamacpp:n_tokens_max Largest observed sequence length (prompt + generation)
# TYPE llamacpp:n_tokens_max counter
llamacpp:n_tokens_max 256
# HELP llamacpp:predicted_tokens_seconds Average generation throughput in tokens/s
# TYPE llamacpp:predicted_tokens_seconds gauge
llamacpp:predicted_tokens_seconds 1587.3
# HELP llamacpp:requests_processing Number of requests processing
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 2
# HELP llamacpp:requests_deferred Number of requests deferred
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 6
# HELP llamacpp:n_busy_slots_per_decode Average number of busy slots per llama_decode() call
# TYPE llamacpp:n_busy_slots_per_decode gauge
llamacpp:n_busy_slots_per_decode 1.8
"""


def test_llama_servers_own_page_gives_its_queue_and_running_requests() -> None:
    assert parse(LLAMA_SERVER_PAGE, at=1.0) == Load(1.0, waiting=6, running=2, kv_usage=None)
    # Older builds also exported a KV gauge; it is read when there.
    older = LLAMA_SERVER_PAGE + "llamacpp:kv_cache_usage_ratio 0.4\n"
    assert parse(older, at=1.0) == Load(1.0, waiting=6, running=2, kv_usage=0.4)


def test_several_models_on_one_server_add_up_and_the_fullest_cache_counts() -> None:
    page = _render("vllm", Engine("a", 1, 2, 0.5), Engine("b", 3, 4, 0.75))
    assert parse(page, 0.0) == Load(0.0, waiting=6, running=4, kv_usage=0.75)


def test_a_page_of_another_kind_is_not_an_idle_server() -> None:
    assert parse("# HELP up x\nup 1\nprocess_cpu_seconds_total 3.5\n", 0.0) is None
    assert parse("", 0.0) is None


def test_labels_with_spaces_timestamps_and_bad_values() -> None:
    page = (
        'vllm:num_requests_waiting{model_name="a b} c",engine="0"} 4 1700000000000\n'
        "vllm:num_requests_running NaN\n"
        'vllm:num_requests_running{x="1"} -1\n'
        'vllm:num_requests_running{x="2"} 2.0\n'
        'vllm:kv_cache_usage_perc{x="1"} oops\n'
    )
    assert parse(page, 1.0) == Load(1.0, waiting=4, running=2, kv_usage=None)


@given(st.text(max_size=300))
def test_any_text_parses_or_is_refused_without_raising(text: str) -> None:
    load = parse(text, 0.0)
    assert load is None or (load.waiting >= 0 and load.running >= 0)


def test_age() -> None:
    assert Load(10.0, 0, 0).age(12.5) == 2.5
