"""Seed 001's native requests translated into the OpenAI requests the deployments serve (pure).

    TextGenerationRequest  → POST /v1/completions        (prompt, max_tokens, temperature,
                                                           top_p, top_k, stop, stream)
    ImageGenerationRequest → POST /v1/images/generations (size WxH, b64_json, diffusers extras)
    TextToSpeechRequest    → POST /v1/audio/speech       (input, voice, response_format, speed)

Every field is checked here (the native face owns its schema, unlike ``/v1`` which forwards
what it does not read), with seed 001's defaults; the result is an ``InferenceRequest`` the
call stage sends as it sends any other. ``pipeline/request.py``'s OpenAI parsing is untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from swarmgate.errors import BadRequest
from swarmgate.pipeline.asgi import parse_json_object
from swarmgate.pipeline.request import Answer, InferenceRequest, Route
from swarmgate.types import ApiScope, ModelType

PREFIX = "/api/v1/inference/"
TEXT = Route(
    "text-generation",
    "/v1/completions",
    frozenset({ModelType.CHAT, ModelType.COMPLETION}),
    "prompt",
    endpoint=PREFIX + "text-generation",
)
IMAGE = Route(
    "image-generation",
    "/v1/images/generations",
    frozenset({ModelType.IMAGE}),
    "prompt",
    endpoint=PREFIX + "image-generation",
)
SPEECH = Route(
    "text-to-speech",
    "/v1/audio/speech",
    frozenset({ModelType.SPEECH, ModelType.AUDIO}),
    "text",
    answer=Answer.WHOLE,  # the face turns it into base64 in its InferenceResponse
    endpoint=PREFIX + "text-to-speech",
)
# The scope a route's results are read back with (the model's own scope is checked on the way in).
SCOPES = {
    TEXT.name: ApiScope.INFERENCE_TEXT.value,
    IMAGE.name: ApiScope.INFERENCE_IMAGE.value,
    SPEECH.name: ApiScope.INFERENCE_AUDIO.value,
}
SPEECH_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
MAX_STOP_SEQUENCES = 4
MAX_SPEECH_CHARS = 4096

_MISSING: Any = object()


def _field(payload: dict[str, Any], name: str, default: Any) -> Any:
    value = payload.get(name, _MISSING)
    if value is _MISSING:
        if default is _MISSING:
            raise BadRequest(f"'{name}' is a required property", param=name)
        return default
    return value


def _string(payload: dict[str, Any], name: str, default: Any = _MISSING) -> Any:
    value = _field(payload, name, default)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"'{name}' must be a string", param=name)
    if value is None and default is not None:
        raise BadRequest(f"'{name}' must be a string", param=name)
    return value


def _number(
    payload: dict[str, Any], name: str, default: Any, low: float, high: float, *, integer: bool
) -> Any:
    value = _field(payload, name, default)
    if value is None and default is None:
        return None
    # bool is an int in Python, never a number in JSON.
    wrong = isinstance(value, float) and integer
    if isinstance(value, bool) or not isinstance(value, int | float) or wrong:
        kind = "an integer" if integer else "a number"
        raise BadRequest(f"'{name}' must be {kind}", param=name)
    if not low <= value <= high:
        raise BadRequest(f"'{name}' must be between {low:g} and {high:g}", param=name)
    return value


def _bool(payload: dict[str, Any], name: str, default: bool) -> bool:
    value = _field(payload, name, default)
    if not isinstance(value, bool):
        raise BadRequest(f"'{name}' must be a boolean", param=name)
    return value


def _request(payload: dict[str, Any], model: str | None, stream: bool) -> InferenceRequest:
    # The model's key is written even when null: ``body_for`` replaces it with the
    # deployment's name anyway.
    payload = {"model": model, **payload}
    try:
        raw = orjson.dumps(payload)
    except orjson.JSONEncodeError as exc:  # pragma: no cover - only checked scalars here
        raise BadRequest(f"the request cannot be forwarded: {exc}") from None
    # Usage is always asked for, and kept for the translator (the answer carries it).
    return InferenceRequest(payload, raw, model, stream, wants_usage=True)


def parse_text(route: Route, body: bytes) -> InferenceRequest:
    p: dict[str, Any] = parse_json_object(body)
    model = _string(p, "model", None)
    prompt = _string(p, "prompt")
    stop = _field(p, "stop_sequences", None)
    if stop is not None and not (
        isinstance(stop, list)
        and len(stop) <= MAX_STOP_SEQUENCES
        and all(isinstance(s, str) for s in stop)
    ):
        raise BadRequest(
            f"'stop_sequences' must be an array of at most {MAX_STOP_SEQUENCES} strings",
            param="stop_sequences",
        )
    stream = _bool(p, "stream", False)
    upstream: dict[str, Any] = {
        "prompt": prompt,
        "max_tokens": _number(p, "max_tokens", 512, 1, 1_000_000, integer=True),
        "temperature": _number(p, "temperature", 0.7, 0, 2, integer=False),
        "top_p": _number(p, "top_p", 0.9, 0, 1, integer=False),
        "stream": stream,
    }
    top_k = _number(p, "top_k", None, 1, 1_000_000, integer=True)
    if top_k is not None:
        upstream["top_k"] = top_k  # vLLM's, SGLang's and llama.cpp's extension
    if stop:
        upstream["stop"] = stop
    if stream:
        upstream["stream_options"] = {"include_usage": True}
    return _request(upstream, model, stream)


def parse_image(route: Route, body: bytes) -> InferenceRequest:
    p: dict[str, Any] = parse_json_object(body)
    model = _string(p, "model", None)
    width = _number(p, "width", 1024, 64, 4096, integer=True)
    height = _number(p, "height", 1024, 64, 4096, integer=True)
    upstream: dict[str, Any] = {
        "prompt": _string(p, "prompt"),
        "n": 1,
        "size": f"{width}x{height}",
        "response_format": "b64_json",
        # Diffusers' names, as OpenAI-compatible diffusion servers (vLLM-Omni) take them.
        "num_inference_steps": _number(p, "steps", 50, 1, 500, integer=True),
        "guidance_scale": _number(p, "guidance_scale", 7.5, 0, 50, integer=False),
    }
    negative = _string(p, "negative_prompt", None)
    if negative is not None:
        upstream["negative_prompt"] = negative
    seed = _number(p, "seed", None, 0, 2**63 - 1, integer=True)
    if seed is not None:
        upstream["seed"] = seed
    return _request(upstream, model, stream=False)


def parse_speech(route: Route, body: bytes) -> InferenceRequest:
    p: dict[str, Any] = parse_json_object(body)
    model = _string(p, "model", None)
    text = _string(p, "text")
    if not text or len(text) > MAX_SPEECH_CHARS:
        raise BadRequest(f"'text' must have 1 to {MAX_SPEECH_CHARS} characters", param="text")
    fmt = _string(p, "format", "mp3")
    if fmt not in SPEECH_FORMATS:
        raise BadRequest(f"'format' must be one of {', '.join(SPEECH_FORMATS)}", param="format")
    upstream: dict[str, Any] = {
        "input": text,
        "voice": _string(p, "voice", "alloy"),
        "response_format": fmt,
        "speed": _number(p, "speed", 1.0, 0.25, 4.0, integer=False),
    }
    language = _string(p, "language", None)
    if language is not None:
        upstream["language"] = language
    return _request(upstream, model, stream=False)


PARSERS: dict[str, tuple[Route, Callable[[Route, bytes], InferenceRequest]]] = {
    TEXT.endpoint: (TEXT, parse_text),
    IMAGE.endpoint: (IMAGE, parse_image),
    SPEECH.endpoint: (SPEECH, parse_speech),
}
