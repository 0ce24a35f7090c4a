"""Every answer of the simulator validates against OpenAI's published OpenAPI document: chat
and its chunks, completions and theirs, embeddings, models, images and transcripts (issue 12,
item 10: the chat message lacked the required ``refusal``)."""

from __future__ import annotations

import base64
import struct
from typing import Any

import aiohttp
import orjson
import pytest

from tests.openai_schema import problems
from tests.sim.helpers import StartSim

MODELS: dict[str, dict[str, Any]] = {
    "chat": {"max_tokens_default": 6},
    "embed": {"embedding_dim": 8},
    "painter": {"modality": "image"},
    "scribe": {"modality": "transcription"},
}
CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture
async def url(sim: StartSim) -> str:
    return await sim(MODELS)


async def _json(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> Any:
    async with http.post(url, json=body) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def _events(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> list[Any]:
    async with http.post(url, json=body) as r:
        assert r.status == 200, await r.text()
        data = (await r.read()).decode()
    payloads = [e.removeprefix("data: ") for e in data.split("\n\n") if e]
    assert payloads[-1] == "[DONE]"
    return [orjson.loads(p) for p in payloads[:-1]]


async def test_a_chat_completion_matches_openais_schema(
    url: str, http: aiohttp.ClientSession
) -> None:
    body = await _json(http, url + "/v1/chat/completions", CHAT)
    assert body["choices"][0]["message"]["refusal"] is None
    assert problems("CreateChatCompletionResponse", body) == []


@pytest.mark.parametrize("include_usage", [False, True])
async def test_chat_chunks_match_openais_schema(
    url: str, http: aiohttp.ClientSession, include_usage: bool
) -> None:
    request = {**CHAT, "stream": True, "stream_options": {"include_usage": include_usage}}
    chunks = await _events(http, url + "/v1/chat/completions", request)
    assert len(chunks) > 2
    for chunk in chunks:
        assert problems("CreateChatCompletionStreamResponse", chunk) == [], chunk


async def test_a_completion_and_its_chunks_match_openais_schema(
    url: str, http: aiohttp.ClientSession
) -> None:
    request = {"model": "chat", "prompt": "once upon"}
    body = await _json(http, url + "/v1/completions", request)
    assert problems("CreateCompletionResponse", body) == []
    streamed = {**request, "stream": True, "stream_options": {"include_usage": True}}
    chunks = await _events(http, url + "/v1/completions", streamed)
    for chunk in chunks:
        if chunk["choices"]:  # the last, usage-only chunk has none
            assert problems("CompletionStreamChunk", chunk) == [], chunk


@pytest.mark.parametrize("encoding_format", ["float", "base64"])
async def test_embeddings_match_openais_schema(
    url: str, http: aiohttp.ClientSession, encoding_format: str
) -> None:
    request = {"model": "embed", "input": ["a", "b"], "encoding_format": encoding_format}
    body = await _json(http, url + "/v1/embeddings", request)
    if encoding_format == "base64":
        # OpenAI sends base64 embeddings as strings, which its document (floats only) does
        # not describe: checked decoded, as the float vectors they stand for.
        for item in body["data"]:
            raw = base64.b64decode(item["embedding"])
            item["embedding"] = list(struct.unpack(f"<{len(raw) // 4}f", raw))
            assert len(item["embedding"]) == 8
    assert problems("CreateEmbeddingResponse", body) == []


async def test_models_match_openais_schema(url: str, http: aiohttp.ClientSession) -> None:
    async with http.get(url + "/v1/models") as r:
        listed = await r.json()
    assert problems("ListModelsResponse", listed) == []
    assert {m["id"] for m in listed["data"]} == set(MODELS)
    async with http.get(url + "/v1/models/chat") as r:
        assert problems("Model", await r.json()) == []


@pytest.mark.parametrize("response_format", ["b64_json", "url"])
async def test_images_match_openais_schema(
    url: str, http: aiohttp.ClientSession, response_format: str
) -> None:
    request = {"model": "painter", "prompt": "a swarm", "n": 2, "response_format": response_format}
    body = await _json(http, url + "/v1/images/generations", request)
    assert problems("ImagesResponse", body) == []
    assert len(body["data"]) == 2 and set(body["data"][0]) == {response_format}


@pytest.mark.parametrize(
    ("response_format", "schema"),
    [
        ("json", "CreateTranscriptionResponseJson"),
        ("verbose_json", "CreateTranscriptionResponseVerboseJson"),
    ],
)
async def test_a_transcript_matches_openais_schema(
    url: str, http: aiohttp.ClientSession, response_format: str, schema: str
) -> None:
    form = aiohttp.FormData()
    form.add_field("file", b"\x00\x01" * 4000, filename="a.wav", content_type="audio/wav")
    form.add_field("model", "scribe")
    form.add_field("response_format", response_format)
    async with http.post(url + "/v1/audio/transcriptions", data=form) as r:
        assert r.status == 200, await r.text()
        body = await r.json()
    assert problems(schema, body) == []
