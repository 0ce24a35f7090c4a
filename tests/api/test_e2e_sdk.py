"""The official OpenAI SDK against a real gateway in front of a real simulated fleet.

One simulator process (two replicas) and one gateway serve the whole module; a recording HTTP
server stands in as a deployment where a test must see exactly what the gateway sent upstream.
"""

from __future__ import annotations

import itertools
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import openai
import pytest
import yaml
from openai import AsyncOpenAI, OpenAI

from tests.api.e2e import (
    FAST,
    MESSAGES,
    REQUEST_ID,
    Processes,
    Recorder,
    assert_clean_log,
)
from tests.plugins.processes import SWARMGATE, Gateway, new_admin_key

ADMIN_KEY = new_admin_key()
UPSTREAM_SECRET = "upstream-secret"
EMBED_DIM = 32


@dataclass
class Stack:
    gw: Gateway
    chat_deployments: tuple[str, str]
    config: dict[str, Any]


@pytest.fixture(scope="module")
def stack(procs: Processes, recorder: Recorder) -> Iterator[Stack]:
    sim = procs.sim(
        {
            "chat": FAST,
            "embed": {**FAST, "embedding_dim": EMBED_DIM},
            "secured": {**FAST, "api_key": UPSTREAM_SECRET},
            # Accepts only the gateway's own admin key: reachable only if the gateway leaked
            # the client's Authorization header upstream.
            "leaky": {**FAST, "api_key": ADMIN_KEY},
        },
        replicas=2,
    )
    first, second = sim.urls.values()
    config: dict[str, Any] = {
        "default_model": "chat",
        "models": {
            "chat": {
                "aliases": ["chatty"],
                # Sequential requests alternate: the tests below see both replicas answer.
                "balancer": "round_robin",
                "deployments": [
                    {"url": first, "name": "chat-a"},
                    {"url": second, "name": "chat-b"},
                ],
            },
            # The same two replicas, with sticky sessions.
            "sticky": {
                "balancer": {"strategy": "consistent_hash", "hash_on": ["header", "user"]},
                "deployments": [
                    {"url": first, "model": "chat", "name": "sticky-a"},
                    {"url": second, "model": "chat", "name": "sticky-b"},
                ],
            },
            "embed": {"type": "embedding", "deployments": [{"url": first}]},
            "secured": {"deployments": [{"url": first, "api_key_env": "UPSTREAM_KEY"}]},
            "leaky": {"deployments": [{"url": first}]},
            "echo": {
                "deployments": [{"url": recorder.url, "model": "upstream-echo", "name": "rec"}]
            },
        },
    }
    gw = procs.gateway(
        config, env={"UPSTREAM_KEY": UPSTREAM_SECRET, "SWARMGATE_ADMIN_KEY": ADMIN_KEY}
    )
    yield Stack(gw, ("chat-a", "chat-b"), config)
    assert_clean_log(gw)


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[OpenAI]:
    with OpenAI(base_url=stack.gw.url + "/v1", api_key=ADMIN_KEY, max_retries=0) as c:
        yield c


@pytest.fixture
async def aclient(stack: Stack) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=stack.gw.url + "/v1", api_key=ADMIN_KEY, max_retries=0) as c:
        yield c


def test_chat_sync_returns_content_usage_and_gateway_headers(client: OpenAI, stack: Stack) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="chat", messages=MESSAGES, max_tokens=5
    )
    assert raw.headers["x-swarmgate-deployment"] in stack.chat_deployments
    assert raw.headers["x-swarmgate-model"] == "chat"
    assert REQUEST_ID.match(raw.headers["x-request-id"])
    out = raw.parse()
    assert out.object == "chat.completion"
    assert out.model == "chat"
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content
    assert out.usage is not None
    assert out.usage.completion_tokens == 5
    assert out.usage.prompt_tokens > 0


async def test_chat_async(aclient: AsyncOpenAI, stack: Stack) -> None:
    raw = await aclient.chat.completions.with_raw_response.create(
        model="chat", messages=MESSAGES, max_tokens=3
    )
    assert raw.headers["x-swarmgate-deployment"] in stack.chat_deployments
    out = raw.parse()
    assert out.choices[0].message.content
    assert out.usage is not None and out.usage.completion_tokens == 3


def test_request_ids_are_generated_unique_or_echoed(client: OpenAI, recorder: Recorder) -> None:
    one = client.chat.completions.with_raw_response.create(model="chat", messages=MESSAGES)
    two = client.chat.completions.with_raw_response.create(model="chat", messages=MESSAGES)
    assert one.headers["x-request-id"] != two.headers["x-request-id"]
    mine = client.chat.completions.with_raw_response.create(
        model="echo", messages=MESSAGES, extra_headers={"X-Request-ID": "trace-42/abc"}
    )
    assert mine.headers["x-request-id"] == "trace-42/abc"
    assert recorder.last().headers["x-request-id"] == "trace-42/abc"
    generated = client.chat.completions.with_raw_response.create(model="echo", messages=MESSAGES)
    assert recorder.last().headers["x-request-id"] == generated.headers["x-request-id"]


def test_an_unusable_request_id_is_replaced(client: OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="chat", messages=MESSAGES, extra_headers={"X-Request-ID": "x" * 500}
    )
    assert raw.headers["x-request-id"] != "x" * 500
    assert REQUEST_ID.match(raw.headers["x-request-id"])


def test_a_null_prompt_reaches_the_deployment(client: OpenAI, recorder: Recorder) -> None:
    # OpenAI's schema allows "prompt": null (the model's default prompt); the SDK sends it so.
    client.completions.create(model="echo", prompt=None, max_tokens=2)
    got = recorder.last()
    assert got.path == "/v1/completions"
    assert "prompt" in got.body and got.body["prompt"] is None


def test_unknown_fields_reach_the_deployment_untouched(client: OpenAI, recorder: Recorder) -> None:
    tools: list[Any] = [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "description": "Look something up",
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
            },
        }
    ]
    vendor = {"nested": [1, 2.5, None, "ü"], "flag": True}
    client.chat.completions.create(
        model="echo",
        messages=MESSAGES,
        tools=tools,
        tool_choice="auto",
        response_format={"type": "json_object"},
        logprobs=True,
        top_logprobs=2,
        seed=1234,
        n=2,
        temperature=0.25,
        extra_body={"x_vendor": vendor, "guided_regex": "[a-z]+"},
    )
    got = recorder.last()
    assert got.path == "/v1/chat/completions"
    sent = got.body
    assert sent["model"] == "upstream-echo"  # the deployment's name for the model
    assert sent["messages"] == MESSAGES
    assert sent["tools"] == tools
    assert sent["tool_choice"] == "auto"
    assert sent["response_format"] == {"type": "json_object"}
    assert sent["logprobs"] is True
    assert sent["top_logprobs"] == 2
    assert sent["seed"] == 1234
    assert sent["n"] == 2
    assert sent["temperature"] == 0.25
    assert sent["x_vendor"] == vendor
    assert sent["guided_regex"] == "[a-z]+"


def test_headers_forwarded_and_dropped(client: OpenAI, recorder: Recorder) -> None:
    client.chat.completions.create(
        model="echo",
        messages=MESSAGES,
        extra_headers={"X-Trace-Tag": "blue", "Cookie": "session=secret", "X-Real-IP": "1.2.3.4"},
    )
    headers = recorder.last().headers
    assert headers["x-trace-tag"] == "blue"
    assert headers["content-type"] == "application/json"
    assert "authorization" not in headers  # the echo deployment has no key of its own
    assert "cookie" not in headers
    assert "x-real-ip" not in headers
    assert ADMIN_KEY not in str(headers)


def test_seed_makes_the_text_deterministic_across_replicas(client: OpenAI, stack: Stack) -> None:
    seen: dict[str, str] = {}
    for _ in range(2):
        raw = client.chat.completions.with_raw_response.create(
            model="chat", messages=MESSAGES, max_tokens=12, seed=7
        )
        seen[raw.headers["x-swarmgate-deployment"]] = raw.parse().choices[0].message.content or ""
    assert set(seen) == set(stack.chat_deployments)  # both replicas answered
    assert len(set(seen.values())) == 1
    other = client.chat.completions.create(model="chat", messages=MESSAGES, max_tokens=12, seed=8)
    assert other.choices[0].message.content != next(iter(seen.values()))


def test_round_robin_alternates_between_replicas(client: OpenAI, stack: Stack) -> None:
    picks = [
        client.chat.completions.with_raw_response.create(
            model="chat", messages=MESSAGES, max_tokens=1
        ).headers["x-swarmgate-deployment"]
        for _ in range(6)
    ]
    assert set(picks) == set(stack.chat_deployments)
    assert all(a != b for a, b in itertools.pairwise(picks)), picks


def test_a_session_stays_on_one_replica(client: OpenAI) -> None:
    def served(**extra: Any) -> str:
        raw = client.chat.completions.with_raw_response.create(
            model="sticky", messages=MESSAGES, max_tokens=1, **extra
        )
        return raw.headers["x-swarmgate-deployment"]

    for session in ("conv-1", "conv-2", "conv-3"):
        header = {"extra_headers": {"X-Session-ID": session}}
        assert len({served(**header) for _ in range(4)}) == 1
    assert len({served(user="user-1") for _ in range(4)}) == 1
    # Sessions spread over both replicas.
    assert {served(user=f"user-{n}") for n in range(16)} == {"sticky-a", "sticky-b"}


def test_alias_resolves_to_its_model(client: OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="chatty", messages=MESSAGES, max_tokens=2
    )
    assert raw.headers["x-swarmgate-model"] == "chat"
    assert raw.parse().model == "chat"  # the upstream was asked for the real model


async def test_default_model_serves_requests_without_model(stack: Stack) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with aiohttp.ClientSession() as http:
        body = {"messages": MESSAGES, "max_tokens": 2}
        async with http.post(
            stack.gw.url + "/v1/chat/completions", json=body, headers=headers
        ) as r:
            assert r.status == 200, await r.text()
            assert r.headers["x-swarmgate-model"] == "chat"
            answer = await r.json()
        assert answer["model"] == "chat"
        assert answer["usage"]["completion_tokens"] == 2
        body = {"prompt": "Once upon a time", "max_tokens": 2, "stream": True}
        async with http.post(stack.gw.url + "/v1/completions", json=body, headers=headers) as r:
            assert r.status == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            text = await r.text()
        assert text.rstrip().endswith("data: [DONE]")


def test_completions_sync_stream_and_not(client: OpenAI) -> None:
    out = client.completions.create(model="chat", prompt="Once upon a time", max_tokens=6, seed=3)
    assert out.object == "text_completion"
    assert out.choices[0].text
    assert out.usage is not None and out.usage.completion_tokens == 6
    stream = client.completions.create(
        model="chat", prompt="Once upon a time", max_tokens=6, seed=3, stream=True
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == out.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"


async def test_completions_async_stream(aclient: AsyncOpenAI) -> None:
    stream = await aclient.completions.create(
        model="chat",
        prompt=["a list", "of prompts"],
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    assert "".join(c.choices[0].text for c in chunks if c.choices)


def test_embeddings_sync(client: OpenAI) -> None:
    raw = client.embeddings.with_raw_response.create(model="embed", input=["one", "two", "three"])
    assert raw.headers["x-swarmgate-model"] == "embed"
    out = raw.parse()
    assert [d.index for d in out.data] == [0, 1, 2]
    assert all(len(d.embedding) == EMBED_DIM for d in out.data)
    assert out.data[0].embedding != out.data[1].embedding
    assert out.usage.prompt_tokens > 0


async def test_embeddings_async_with_dimensions(aclient: AsyncOpenAI) -> None:
    out = await aclient.embeddings.create(model="embed", input="hello", dimensions=8)
    assert len(out.data) == 1
    assert len(out.data[0].embedding) == 8


def test_models_list_and_retrieve(client: OpenAI, stack: Stack) -> None:
    ids = {m.id for m in client.models.list()}
    assert ids == set(stack.config["models"])
    chat = client.models.retrieve("chat")
    assert chat.id == "chat" and chat.object == "model"
    assert client.models.retrieve("chatty").id == "chat"
    with pytest.raises(openai.NotFoundError) as exc:
        client.models.retrieve("no-such-model")
    assert exc.value.request_id


async def test_models_async(aclient: AsyncOpenAI) -> None:
    page = await aclient.models.list()
    assert "embed" in {m.id for m in page.data}
    assert (await aclient.models.retrieve("embed")).id == "embed"


def test_deployment_key_is_injected_from_the_environment(client: OpenAI) -> None:
    out = client.chat.completions.create(model="secured", messages=MESSAGES, max_tokens=2)
    assert out.usage is not None and out.usage.completion_tokens == 2


def test_client_authorization_is_never_forwarded(client: OpenAI) -> None:
    # The "leaky" upstream would accept the client's own key; it must never see it, so it
    # refuses the request. Its 401 is about the gateway's credential, not the client's: the
    # client gets a 502 that says so, and not the upstream's body.
    with pytest.raises(openai.InternalServerError) as exc:
        client.chat.completions.create(model="leaky", messages=MESSAGES, max_tokens=2)
    assert exc.value.status_code == 502
    assert "rejected the gateway's credentials" in exc.value.message
    assert "Incorrect API key" not in str(exc.value.body)


def test_a_missing_api_key_env_is_a_configuration_error(stack: Stack, tmp_path: Any) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(stack.config))
    env = {"PATH": "/usr/bin:/bin"}
    check = subprocess.run(
        [*SWARMGATE, "check-config", str(path)], capture_output=True, text=True, env=env
    )
    assert check.returncode != 0
    assert "models.secured.deployments[0].api_key_env: $UPSTREAM_KEY is not set" in check.stderr
    serve = subprocess.run(
        [*SWARMGATE, "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert serve.returncode != 0
    assert "$UPSTREAM_KEY is not set" in serve.stderr
    assert UPSTREAM_SECRET not in serve.stderr + serve.stdout
