"""The simulator's image, speech and transcription models: real files, made deterministically,
and refusals where a request does not fit the model."""

from __future__ import annotations

import base64
import io
import struct
import wave
import zlib
from typing import Any

import aiohttp
import pytest

from swarmgate.sim import media
from tests.sim.helpers import StartSim

MODELS: dict[str, dict[str, Any]] = {
    "painter": {"modality": "image"},
    "voice": {"modality": "speech"},
    "scribe": {"modality": "transcription"},
    "chat": {},
}


@pytest.fixture
async def url(sim: StartSim) -> str:
    return await sim(MODELS)


def _png_size(data: bytes) -> tuple[int, int]:
    """Check the PNG's signature and every chunk's CRC; return its width and height."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    at, kinds = 8, []
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        (crc,) = struct.unpack(">I", data[at + 8 + length : at + 12 + length])
        assert zlib.crc32(kind + body) == crc
        kinds.append(kind)
        if kind == b"IDAT":
            assert zlib.decompress(body)
        at += 12 + length
    assert kinds == [b"IHDR", b"IDAT", b"IEND"]
    width, height = struct.unpack(">II", data[16:24])
    return width, height


async def test_an_image_is_a_png_of_the_size_asked(url: str, http: aiohttp.ClientSession) -> None:
    request = {"model": "painter", "prompt": "a swarm", "size": "64x32"}
    async with http.post(url + "/v1/images/generations", json=request) as r:
        assert r.status == 200
        body = await r.json()
    assert _png_size(base64.b64decode(body["data"][0]["b64_json"])) == (64, 32)
    request["response_format"] = "url"
    async with http.post(url + "/v1/images/generations", json=request) as r:
        data_url = (await r.json())["data"][0]["url"]
    assert data_url.startswith("data:image/png;base64,")
    # The same prompt, the same picture.
    assert data_url.removeprefix("data:image/png;base64,") == body["data"][0]["b64_json"]


async def test_speech_is_a_wav_tone_as_long_as_the_text(
    url: str, http: aiohttp.ClientSession
) -> None:
    request = {"model": "voice", "input": "x" * 20, "voice": "alloy", "response_format": "wav"}
    async with http.post(url + "/v1/audio/speech", json=request) as r:
        assert r.status == 200 and r.content_type == "audio/wav"
        assert r.headers.get("Transfer-Encoding") == "chunked"  # streamed, not sized up front
        data = await r.read()
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 24_000)
        assert w.getnframes() == round(media.speech_seconds("x" * 20) * 24_000)
        assert max(w.readframes(100)) > 0  # a tone, not silence
    request["response_format"] = "pcm"
    async with http.post(url + "/v1/audio/speech", json=request) as r:
        assert r.content_type == "audio/pcm"
        assert await r.read() == data[media.WAV_HEADER_BYTES :]


async def _transcribe(http: aiohttp.ClientSession, url: str, audio: bytes, fmt: str) -> Any:
    form = aiohttp.FormData()
    form.add_field("file", audio, filename="a.wav", content_type="audio/wav")
    form.add_field("model", "scribe")
    form.add_field("response_format", fmt)
    async with http.post(url + "/v1/audio/transcriptions", data=form) as r:
        assert r.status == 200, await r.text()
        return await (r.json() if fmt != "text" else r.text())


async def test_a_transcript_follows_the_uploaded_bytes(
    url: str, http: aiohttp.ClientSession
) -> None:
    one = await _transcribe(http, url, b"a" * 5000, "json")
    assert one == await _transcribe(http, url, b"a" * 5000, "json")
    assert one["text"] == media.transcript(b"a" * 5000)
    assert one["text"] != (await _transcribe(http, url, b"b" * 5000, "json"))["text"]
    assert await _transcribe(http, url, b"a" * 5000, "text") == one["text"]


@pytest.mark.parametrize(
    ("path", "request_body"),
    [
        ("/v1/images/generations", {"model": "chat", "prompt": "x"}),
        ("/v1/images/generations", {"model": "painter", "prompt": "x", "size": "huge"}),
        ("/v1/audio/speech", {"model": "voice", "input": "x", "response_format": "mp3"}),
        ("/v1/audio/speech", {"model": "painter", "input": "x"}),
        ("/v1/chat/completions", {"model": "voice", "messages": []}),
        ("/v1/audio/transcriptions", {"model": "scribe"}),  # JSON, not an upload
    ],
)
async def test_a_request_that_does_not_fit_the_model_is_a_400(
    url: str, http: aiohttp.ClientSession, path: str, request_body: dict[str, Any]
) -> None:
    async with http.post(url + path, json=request_body) as r:
        assert r.status == 400, await r.text()
        assert (await r.json())["error"]["type"] == "invalid_request_error"
