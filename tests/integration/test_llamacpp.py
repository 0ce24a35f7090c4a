"""swarmgate in front of a real server we did not write: llama.cpp's llama-server.

First the backend alone, through the official `openai` SDK, so that a failure there is not
blamed on the gateway; then the same calls through a real `swarmgate serve` process.

The tiny model never samples its end-of-generation token (see gguf_factory), so every answer
runs to exactly `max_tokens`: the token counts asserted here are exact, not ranges.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.gguf_factory import MODEL_ALIAS
from tests.plugins.processes import Gateway

pytestmark = pytest.mark.slow

MAX_TOKENS = 8
MESSAGES: list[Any] = [{"role": "user", "content": "Say something about the weather."}]


def _client(base_url: str, api_key: str = "not-needed") -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url + "/v1", api_key=api_key, max_retries=0, timeout=30)


@pytest.fixture
def llama(llama_server: str) -> openai.OpenAI:
    return _client(llama_server)


@pytest.fixture
def gateway(gateway_factory: Callable[..., Gateway], llama_server: str) -> Gateway:
    config = {
        "models": {MODEL_ALIAS: {"deployments": [{"url": llama_server, "model": MODEL_ALIAS}]}}
    }
    return gateway_factory(config)


@pytest.fixture
def client(gateway: Gateway) -> openai.OpenAI:
    return _client(gateway.url, gateway.admin_key)


def _output_tokens(gateway: Gateway) -> float:
    request = urllib.request.Request(
        gateway.url + "/metrics", headers={"authorization": f"Bearer {gateway.admin_key}"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "gateway_tokens_total" and sample.labels == {
                "model": MODEL_ALIAS,
                "direction": "output",
            }:
                return sample.value
    return 0.0


def _wait_output_tokens(gateway: Gateway, expected: float) -> float:
    deadline = time.monotonic() + 5
    while (seen := _output_tokens(gateway)) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return seen


def test_llamacpp_chat(llama: openai.OpenAI) -> None:
    completion = llama.chat.completions.create(
        model=MODEL_ALIAS, messages=MESSAGES, max_tokens=MAX_TOKENS
    )

    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == MAX_TOKENS
    assert completion.usage.prompt_tokens > 0


def test_llamacpp_streaming_chat(llama: openai.OpenAI) -> None:
    chunks = list(
        llama.chat.completions.create(
            model=MODEL_ALIAS, messages=MESSAGES, max_tokens=MAX_TOKENS, stream=True
        )
    )

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) >= 2
    assert text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_llamacpp_lists_the_model(llama: openai.OpenAI) -> None:
    assert MODEL_ALIAS in [m.id for m in llama.models.list()]


def test_gateway_chat(gateway: Gateway, client: openai.OpenAI, llama_server: str) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL_ALIAS, messages=MESSAGES, max_tokens=MAX_TOKENS
    )
    completion = raw.parse()

    assert raw.headers["x-swarmgate-deployment"] == f"{MODEL_ALIAS}@{urlsplit(llama_server).netloc}"
    assert completion.model == MODEL_ALIAS
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == MAX_TOKENS
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + MAX_TOKENS
    assert _wait_output_tokens(gateway, MAX_TOKENS) == MAX_TOKENS


def test_gateway_stream_hides_usage_unless_asked(gateway: Gateway, client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL_ALIAS, messages=MESSAGES, max_tokens=MAX_TOKENS, stream=True
        )
    )

    assert len(chunks) >= 2
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"
    # The gateway asked llama.cpp for usage anyway, to account for the stream.
    assert _wait_output_tokens(gateway, MAX_TOKENS) == MAX_TOKENS


def test_gateway_stream_shows_usage_when_asked(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL_ALIAS,
            messages=MESSAGES,
            max_tokens=MAX_TOKENS,
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    final = chunks[-1]
    assert final.choices == []
    assert final.usage is not None
    assert final.usage.completion_tokens == MAX_TOKENS
    assert final.usage.prompt_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_gateway_completions(gateway: Gateway, client: openai.OpenAI) -> None:
    completion = client.completions.create(model=MODEL_ALIAS, prompt="Once upon", max_tokens=5)

    assert completion.choices[0].text
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 5
    assert _wait_output_tokens(gateway, 5) == 5


def test_gateway_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    # llama.cpp itself answers whatever model is named; the 404 must come from the gateway.
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES, max_tokens=1)

    assert MODEL_ALIAS in caught.value.message


@pytest.mark.parametrize("keepalive", [4.0, 30.0])
def test_gateway_loses_no_request_across_the_servers_keepalive_timeout(
    gateway_factory: Callable[..., Gateway], llama_server: str, keepalive: float
) -> None:
    # llama.cpp's server closes a connection idle for 5 s. With the default keep-alive (4 s)
    # the gateway closes first; with 30 s the server does, and a request can cross its close
    # on the wire: it must be sent again, not failed. Bursts of mixed requests, 8 at a time,
    # separated by pauses just past the server's timeout.
    deployment = {"url": llama_server, "model": MODEL_ALIAS, "keepalive": keepalive}
    gw = gateway_factory({"models": {MODEL_ALIAS: {"deployments": [deployment]}}})
    client = _client(gw.url, gw.admin_key)

    def one(i: int) -> str:
        if i % 3 == 0:
            stream = client.chat.completions.create(
                model=MODEL_ALIAS, messages=MESSAGES, max_tokens=2, stream=True
            )
            return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        if i % 3 == 1:
            return client.completions.create(model=MODEL_ALIAS, prompt="Hi", max_tokens=2).id
        reply = client.chat.completions.create(model=MODEL_ALIAS, messages=MESSAGES, max_tokens=2)
        return reply.id

    failures: list[BaseException] = []
    with ThreadPoolExecutor(8) as pool:
        for burst in range(3):
            if burst:
                time.sleep(5.2)
            futures = [pool.submit(one, i) for i in range(16)]
            failures += [f.exception() for f in futures if f.exception() is not None]
            one(burst)  # and a lone one, on a connection the burst left idle
    assert failures == []
    assert "ServerDisconnected" not in gw.output()
