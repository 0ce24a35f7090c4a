"""The official OpenAI SDK's images, speech (streamed) and transcriptions through a real
``swarmgate serve`` in front of a real ``swarmgate sim``."""

from __future__ import annotations

import base64
import io
import wave
from collections.abc import Iterator

import openai
import pytest
from openai import OpenAI

from swarmgate.sim import media
from tests.api.e2e import FAST, Processes, assert_clean_log
from tests.auth.e2e import create_key
from tests.plugins.processes import Gateway

SAID = "The swarm speaks."


@pytest.fixture(scope="module")
def gw(procs: Processes) -> Iterator[Gateway]:
    sim = procs.sim(
        {
            "painter-up": {**FAST, "modality": "image"},
            "voice-up": {**FAST, "modality": "speech", "tokens_per_second": 200},
            "scribe-up": {**FAST, "modality": "transcription"},
        }
    )
    # Each model under another name upstream: the gateway must rewrite it, JSON or multipart.
    config = {
        "models": {
            "painter": {"type": "image", "deployments": [{"url": sim.url, "model": "painter-up"}]},
            "voice": {"type": "speech", "deployments": [{"url": sim.url, "model": "voice-up"}]},
            "scribe": {
                "type": "transcription",
                "deployments": [{"url": sim.url, "model": "scribe-up"}],
            },
        }
    }
    gateway = procs.gateway(config)
    yield gateway
    assert_clean_log(gateway)


@pytest.fixture(scope="module")
def client(gw: Gateway) -> Iterator[OpenAI]:
    with OpenAI(base_url=gw.url + "/v1", api_key=gw.admin_key, max_retries=0) as c:
        yield c


def test_images_generate_returns_a_png(client: OpenAI) -> None:
    result = client.images.generate(
        model="painter", prompt="a swarm", size="256x256", response_format="b64_json"
    )
    assert result.data
    png = base64.b64decode(result.data[0].b64_json or "")
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert result.usage is None  # no token usage, and none needed


def test_speech_streams_a_wav_through(client: OpenAI) -> None:
    with client.audio.speech.with_streaming_response.create(
        model="voice", voice="alloy", input=SAID, response_format="wav"
    ) as response:
        assert response.headers["content-type"] == "audio/wav"
        assert response.headers["x-swarmgate-model"] == "voice"
        # Relayed as it came: chunked, not a body sized after being buffered whole.
        assert response.headers.get("transfer-encoding") == "chunked"
        assert "content-length" not in response.headers
        chunks = list(response.iter_bytes(4800))
    assert len(chunks) > 1
    with wave.open(io.BytesIO(b"".join(chunks))) as w:
        assert w.getframerate() == media.SAMPLE_RATE
        assert w.getnframes() == round(media.speech_seconds(SAID) * media.SAMPLE_RATE)


def test_transcriptions_create_returns_the_simulated_transcript(client: OpenAI) -> None:
    audio = b"RIFF" + bytes(range(256)) * 40
    result = client.audio.transcriptions.create(
        model="scribe", file=("clip.wav", audio, "audio/wav")
    )
    assert result.text == media.transcript(audio)
    text = client.audio.transcriptions.create(
        model="scribe", file=("clip.wav", audio, "audio/wav"), response_format="text"
    )
    assert text.strip() == media.transcript(audio)


def test_a_key_without_the_audio_scope_is_refused(gw: Gateway) -> None:
    _, guest = create_key(gw, role="guest")  # inference:text only
    with OpenAI(base_url=gw.url + "/v1", api_key=guest, max_retries=0) as c:
        with pytest.raises(openai.PermissionDeniedError, match="inference:audio"):
            c.audio.speech.create(model="voice", voice="alloy", input=SAID)
        with pytest.raises(openai.PermissionDeniedError, match="inference:image"):
            c.images.generate(model="painter", prompt="x")


def test_a_model_of_another_type_is_a_400(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match=r"\(image\) cannot serve /v1/audio/speech"):
        client.audio.speech.create(model="painter", voice="alloy", input=SAID)
