"""The official OpenAI SDK, pointed at a simulated server, sees OpenAI's wire format."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import openai
import pytest
from openai import AsyncOpenAI

from tests.sim.helpers import StartSim

MESSAGES = [{"role": "user", "content": "Tell me about the swarm."}]


@pytest.fixture
async def client(sim: StartSim) -> AsyncIterator[AsyncOpenAI]:
    url = await sim({"chat": {"max_tokens_default": 12}, "embed": {"embedding_dim": 64}})
    async with AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0) as c:
        yield c


async def test_chat_completion(client: AsyncOpenAI) -> None:
    out = await client.chat.completions.create(model="chat", messages=MESSAGES, max_tokens=7)
    assert out.object == "chat.completion"
    assert out.id.startswith("chatcmpl-")
    assert out.model == "chat"
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].finish_reason == "length"
    assert out.usage is not None
    assert out.usage.completion_tokens == 7
    assert out.usage.prompt_tokens > 0
    assert out.usage.total_tokens == out.usage.prompt_tokens + 7


async def test_default_length_ends_with_stop(client: AsyncOpenAI) -> None:
    out = await client.chat.completions.create(model="chat", messages=MESSAGES)
    assert out.choices[0].finish_reason == "stop"
    assert out.usage is not None
    assert out.usage.completion_tokens == 12


async def test_max_completion_tokens_wins(client: AsyncOpenAI) -> None:
    out = await client.chat.completions.create(
        model="chat", messages=MESSAGES, max_completion_tokens=3, max_tokens=9
    )
    assert out.usage is not None
    assert out.usage.completion_tokens == 3


async def test_seeded_text_is_deterministic_and_streams_identically(client: AsyncOpenAI) -> None:
    args = {"model": "chat", "messages": MESSAGES, "max_tokens": 10, "seed": 42}
    first = await client.chat.completions.create(**args)  # type: ignore[call-overload]
    second = await client.chat.completions.create(**args)  # type: ignore[call-overload]
    other = await client.chat.completions.create(**{**args, "seed": 43})  # type: ignore[call-overload]
    assert first.choices[0].message.content == second.choices[0].message.content
    assert first.choices[0].message.content != other.choices[0].message.content
    stream = await client.chat.completions.create(**args, stream=True)  # type: ignore[call-overload]
    streamed = "".join([c.choices[0].delta.content or "" async for c in stream])
    assert streamed == first.choices[0].message.content


async def test_stream_chunks_role_first_finish_last_no_usage(client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="chat", messages=MESSAGES, max_tokens=5, stream=True
    )
    chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    content = [c for c in chunks if c.choices[0].delta.content]
    assert len(content) == 5
    assert [c.choices[0].finish_reason for c in chunks] == [None] * 5 + ["length"]
    assert all(c.usage is None for c in chunks)


async def test_stream_include_usage_adds_a_final_usage_only_chunk(client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="chat",
        messages=MESSAGES,
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    *body, last = chunks
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.completion_tokens == 4
    assert last.usage.total_tokens == last.usage.prompt_tokens + 4
    assert all(c.usage is None and len(c.choices) == 1 for c in body)
    assert body[-1].choices[0].finish_reason == "length"


async def test_completions(client: AsyncOpenAI) -> None:
    out = await client.completions.create(model="chat", prompt="Once upon a time", max_tokens=6)
    assert out.object == "text_completion"
    assert out.id.startswith("cmpl-")
    assert out.choices[0].finish_reason == "length"
    assert out.choices[0].text
    assert out.usage is not None
    assert out.usage.completion_tokens == 6
    stream = await client.completions.create(
        model="chat", prompt=[1, 2, 3], max_tokens=3, stream=True
    )
    chunks = [c async for c in stream]
    assert [c.choices[0].finish_reason for c in chunks] == [None, None, "length"]
    assert all(c.object == "text_completion" for c in chunks)


async def test_embeddings_sdk_default_base64_and_float_agree(client: AsyncOpenAI) -> None:
    # The SDK asks for base64 by default and decodes it itself.
    by_default = await client.embeddings.create(model="embed", input=["alpha", "beta"])
    as_float = await client.embeddings.create(
        model="embed", input=["alpha", "beta"], encoding_format="float"
    )
    assert [d.index for d in by_default.data] == [0, 1]
    for a, b in zip(by_default.data, as_float.data, strict=True):
        assert len(a.embedding) == 64
        assert math.fsum(x * x for x in b.embedding) == pytest.approx(1.0)
        assert a.embedding == pytest.approx(b.embedding, rel=1e-6)
    assert by_default.data[0].embedding != pytest.approx(by_default.data[1].embedding)
    assert as_float.usage.prompt_tokens == 3  # "alph" "a" "beta"
    again = await client.embeddings.create(model="embed", input="alpha", encoding_format="float")
    assert again.data[0].embedding == as_float.data[0].embedding
    small = await client.embeddings.create(model="embed", input="alpha", dimensions=8)
    assert len(small.data[0].embedding) == 8


async def test_models_list_and_retrieve(client: AsyncOpenAI) -> None:
    listed = await client.models.list()
    assert sorted(m.id for m in listed.data) == ["chat", "embed"]
    assert (await client.models.retrieve("chat")).id == "chat"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("nope")


async def test_errors_map_to_sdk_exceptions(client: AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as not_found:
        await client.chat.completions.create(model="nope", messages=MESSAGES)
    assert not_found.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model="chat", messages=[])
    with pytest.raises(openai.BadRequestError):
        await client.embeddings.create(model="chat", input="x")
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model="embed", messages=MESSAGES)


async def test_api_key_is_required_when_configured(sim: StartSim) -> None:
    url = await sim({"locked": {"api_key": "s3cret"}})
    async with AsyncOpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError):
            await bad.chat.completions.create(model="locked", messages=MESSAGES)
    async with AsyncOpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0) as good:
        out = await good.chat.completions.create(model="locked", messages=MESSAGES, max_tokens=1)
        assert out.usage is not None
