"""Images, speech and transcriptions through the request path, on the in-memory transport:
relayed answers pass through as they arrive, uploads are forwarded with the model rewritten."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from swarmgate.upstream.memory import MemoryResponse, SentRequest
from tests.pipeline.fleets import Answer, Gateway

A = "http://a.test:8000"
SPEECH = {"model": "m", "input": "hello", "voice": "alloy", "response_format": "wav"}
IMAGE = {"model": "m", "prompt": "a swarm", "response_format": "b64_json"}
BOUNDARY = b"sgtestboundary"
AUDIO = b"RIFF\x00\x01\r\n--not-the-boundary\r\n\xff" * 50


def upload(model: str | None = "m", file: bytes | None = AUDIO) -> bytes:
    parts = []
    if file is not None:
        parts.append(
            b'Content-Disposition: form-data; name="file"; filename="a.wav"\r\n'
            b"Content-Type: audio/wav\r\n\r\n" + file
        )
    if model is not None:
        parts.append(b'Content-Disposition: form-data; name="model"\r\n\r\n' + model.encode())
    parts.append(b'Content-Disposition: form-data; name="response_format"\r\n\r\njson')
    body = b"".join(b"--" + BOUNDARY + b"\r\n" + p + b"\r\n" for p in parts)
    return body + b"--" + BOUNDARY + b"--\r\n"


FORM = [(b"content-type", b"multipart/form-data; boundary=" + BOUNDARY)]


class Client(Answer):
    """Records what the gateway sends, and signals each body chunk as it gets one."""

    def __init__(self) -> None:
        super().__init__()
        self.got_chunk = asyncio.Event()

    async def send(self, message: dict[str, Any]) -> None:
        await super().send(message)
        if message["type"] == "http.response.body" and message.get("body"):
            self.got_chunk.set()


async def test_speech_is_relayed_chunk_by_chunk_as_it_arrives() -> None:
    client = Client()

    async def audio() -> AsyncIterator[bytes]:
        for i in range(3):
            yield b"chunk%d" % i
            # The next chunk exists only once the client got this one: a gateway that
            # buffered the body whole would wait here until the timeout.
            await asyncio.wait_for(client.got_chunk.wait(), 2)
            client.got_chunk.clear()

    async def speech(request: SentRequest) -> MemoryResponse:
        return MemoryResponse(200, {"content-type": "audio/wav"}, audio())

    gw = Gateway(speech, A, type="speech")
    await gw.post(SPEECH, "/v1/audio/speech", client=client)
    assert client.status == 200
    assert client.headers[b"content-type"] == b"audio/wav"
    assert [m.get("body") for m in client.messages[1:]] == [b"chunk0", b"chunk1", b"chunk2", b""]
    assert client.messages[-1].get("more_body", False) is False
    assert gw.transport.sent[0].path == "/v1/audio/speech"
    assert gw.sample("inference_requests_total", model="m", type="speech") == 1
    assert gw.sample("gateway_tokens_total", model="m", direction="input") is None
    assert gw.in_flight() == [0]


async def test_an_image_answer_without_usage_is_relayed_and_counted() -> None:
    image = {"created": 1, "data": [{"b64_json": "iVBORw0KGgo="}]}

    async def images(request: SentRequest) -> MemoryResponse:
        return MemoryResponse.json(image)

    gw = Gateway(images, A, type="image", deployment={"model": "up-image"})
    answer = await gw.post(IMAGE, "/v1/images/generations")
    assert answer.status == 200 and answer.json() == image
    assert gw.transport.sent[0].json() == {**IMAGE, "model": "up-image"}
    endpoint = "/v1/images/generations"
    assert gw.sample("gateway_requests_total", method="POST", endpoint=endpoint, status="200") == 1
    assert gw.sample("inference_requests_total", model="m", type="images") == 1


@pytest.mark.parametrize(
    ("status", "answered"), [(400, 400), (429, 429), (500, 502), (503, 502), (401, 502)]
)
async def test_a_relayed_route_refused_upstream_answers_as_chat_does(
    status: int, answered: int
) -> None:
    async def refuse(request: SentRequest) -> MemoryResponse:
        body = {"error": {"message": "no", "type": "x", "param": None, "code": None}}
        return MemoryResponse.json(body, status)

    gw = Gateway(refuse, A, type="speech")
    answer = await gw.post(SPEECH, "/v1/audio/speech")
    assert answer.status == answered
    assert "error" in answer.json()


async def test_a_speech_body_broken_mid_way_is_left_incomplete() -> None:
    async def broken(request: SentRequest) -> MemoryResponse:
        return MemoryResponse(200, {"content-type": "audio/wav"}, (b"RIFF", OSError("reset")))

    gw = Gateway(broken, A, type="speech")
    answer = await gw.post(SPEECH, "/v1/audio/speech")
    assert answer.status == 200 and answer.body == b"RIFF"
    # No final message: the server drops the connection, and the client sees a broken body.
    assert answer.messages[-1]["more_body"] is True
    endpoint = "/v1/audio/speech"
    assert gw.sample("gateway_requests_total", method="POST", endpoint=endpoint, status="502") == 1
    assert (
        gw.sample("gateway_upstream_errors_total", deployment="m@a.test:8000", kind="stream_broken")
        == 1
    )


async def test_a_transcription_upload_goes_upstream_with_the_deployments_model_name() -> None:
    async def transcribe(request: SentRequest) -> MemoryResponse:
        return MemoryResponse.json({"text": "hello"})

    gw = Gateway(transcribe, A, type="transcription", deployment={"model": "up-whisper"})
    answer = await gw.post(upload(), "/v1/audio/transcriptions", headers=FORM)
    assert answer.status == 200 and answer.json() == {"text": "hello"}
    sent = gw.transport.sent[0]
    assert sent.path == "/v1/audio/transcriptions"
    assert sent.headers["content-type"] == FORM[0][1].decode()
    assert sent.body == upload("up-whisper")  # only the model changed; the file is intact
    assert gw.sample("inference_requests_total", model="m", type="transcriptions") == 1


async def test_an_upload_naming_the_upstream_model_is_forwarded_as_sent() -> None:
    async def transcribe(request: SentRequest) -> MemoryResponse:
        return MemoryResponse(200, {"content-type": "text/plain"}, (b"hello",))

    gw = Gateway(transcribe, A, type="audio")  # the legacy type serves both audio routes
    answer = await gw.post(upload(), "/v1/audio/transcriptions", headers=FORM)
    assert answer.status == 200 and answer.body == b"hello"
    assert gw.transport.sent[0].body == upload()


@pytest.mark.parametrize(
    ("body", "headers", "message"),
    [
        (upload(file=None), FORM, "'file' is a required file"),
        (upload(), [(b"content-type", b"application/json")], "must be multipart/form-data"),
        (upload(), [], "must be multipart/form-data"),
        (upload()[:-20], FORM, "truncated or malformed"),
        (b"--" + BOUNDARY + b"\r\nno headers end--" + BOUNDARY + b"--", FORM, "malformed"),
    ],
)
async def test_a_malformed_upload_is_a_400(
    body: bytes, headers: list[tuple[bytes, bytes]], message: str
) -> None:
    async def never(request: SentRequest) -> MemoryResponse:
        raise AssertionError("a malformed upload must not reach a deployment")

    gw = Gateway(never, A, type="transcription")
    answer = await gw.post(body, "/v1/audio/transcriptions", headers=headers)
    assert answer.status == 400, answer.json()
    assert message in answer.json()["error"]["message"]


async def test_an_upload_is_bounded_by_its_own_limit() -> None:
    async def transcribe(request: SentRequest) -> MemoryResponse:
        return MemoryResponse.json({"text": "hello"})

    # A body above max_body_bytes (1 MiB in these gateways) but within max_upload_bytes.
    big = upload(file=b"x" * (2 << 20))
    gw = Gateway(transcribe, A, type="transcription", server={"max_upload_bytes": 3 << 20})
    answer = await gw.post(big, "/v1/audio/transcriptions", headers=FORM)
    assert answer.status == 200
    gw = Gateway(transcribe, A, type="transcription", server={"max_upload_bytes": 1 << 20})
    answer = await gw.post(big, "/v1/audio/transcriptions", headers=FORM)
    assert answer.status == 413


@pytest.mark.parametrize(
    ("path", "body", "kind"),
    [
        ("/v1/audio/speech", SPEECH, "chat"),
        ("/v1/images/generations", IMAGE, "speech"),
        ("/v1/chat/completions", {"model": "m", "messages": []}, "image"),
        ("/v1/audio/speech", SPEECH, "transcription"),
    ],
)
async def test_a_model_of_another_type_is_refused(
    path: str, body: dict[str, Any], kind: str
) -> None:
    async def never(request: SentRequest) -> MemoryResponse:
        raise AssertionError("must not be sent")

    gw = Gateway(never, A, type=kind)
    answer = await gw.post(body, path)
    assert answer.status == 400
    assert f"({kind}) cannot serve {path}" in answer.json()["error"]["message"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/audio/speech", {"model": "m", "input": ["not", "text"]}),
        ("/v1/audio/speech", {"model": "m"}),
        ("/v1/images/generations", {"model": "m", "prompt": None}),
    ],
)
async def test_speech_input_and_an_image_prompt_must_be_text(
    path: str, body: dict[str, Any]
) -> None:
    async def never(request: SentRequest) -> MemoryResponse:
        raise AssertionError("must not be sent")

    gw = Gateway(never, A, type="speech" if "speech" in path else "image")
    answer = await gw.post(body, path)
    assert answer.status == 400
