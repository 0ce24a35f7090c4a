"""Tokens and spend are counted from upstream usage, streamed or not."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable

import openai
import pytest

from tests.plugins.processes import Gateway, Sim


def _sample(url: str, name: str, **labels: str) -> float:
    with urllib.request.urlopen(url + "/metrics") as r:
        text = r.read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name}{{{want}}}")


@pytest.mark.parametrize("stream", [False, True])
def test_spend_follows_usage_and_prices(
    sim_factory: Callable[..., Sim], gateway_factory: Callable[..., Gateway], stream: bool
) -> None:
    sim = sim_factory({"m": {"ttft_ms": 1, "tokens_per_second": 2000}})
    deployment = {"url": sim.url, "input_cost_per_1k": 0.5, "output_cost_per_1k": 2.0}
    gw = gateway_factory({"models": {"m": {"deployments": [deployment]}}})
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.admin_key, max_retries=0)
    messages = [{"role": "user", "content": "count the tokens of this prompt please"}]
    if stream:
        chunks = list(
            client.chat.completions.create(
                model="m",
                messages=messages,
                max_tokens=7,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        usage = chunks[-1].usage
    else:
        usage = client.chat.completions.create(model="m", messages=messages, max_tokens=7).usage
    assert usage is not None and usage.completion_tokens == 7
    expected = (usage.prompt_tokens * 0.5 + usage.completion_tokens * 2.0) / 1000
    assert _sample(gw.url, "gateway_cost_total", model="m") == pytest.approx(expected)
    assert _sample(gw.url, "gateway_tokens_total", model="m", direction="output") == 7
