"""The fields of an OpenAI request body that the simulator acts on, checked once.

Pure functions from a parsed JSON body to small frozen values; anything malformed is a
``BadRequest`` (400), never a 500. Fields the simulator does not use (``temperature``, ``n``,
``logprobs``, ...) are accepted and ignored, as a lenient server would. A chat request's
``tools`` and ``response_format`` are read by ``sim.tools``, only when present.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson

from swarmgate.errors import BadRequest
from swarmgate.sim.text import render_chat, render_inputs
from swarmgate.sim.tools import Structure, parse_structure


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    model: str
    prompt: str
    max_tokens: int | None  # None: the model's default, ending with finish_reason "stop"
    stream: bool
    include_usage: bool
    seed: int | None
    structure: Structure | None = None  # tools or response_format: see sim.tools


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    model: str
    inputs: list[str]
    encoding_format: Literal["float", "base64"]
    dimensions: int | None


@dataclass(frozen=True, slots=True)
class ImageRequest:
    model: str
    prompt: str
    n: int
    size: str | None
    response_format: Literal["b64_json", "url"]


@dataclass(frozen=True, slots=True)
class SpeechRequest:
    model: str
    input: str
    response_format: Literal["wav", "pcm"]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def model_of(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' is required", param="model")
    return model


def _optional_int(body: dict[str, Any], name: str, minimum: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not _is_int(value) or value < minimum:
        raise BadRequest(f"'{name}' must be an integer >= {minimum}", param=name)
    return int(value)


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadRequest(f"'{name}' must be a boolean", param=name)
    return value


def parse_generation(body: dict[str, Any], *, chat: bool) -> GenerationRequest:
    """``/v1/chat/completions`` (``chat``) or ``/v1/completions``. Several prompts in one
    completions request are served as one prompt, with one choice."""
    model = model_of(body)
    structure = None
    if chat:
        prompt = render_chat(body.get("messages"))
        # A few lookups on the plain path; the tool path's parsing only when asked for.
        if "tools" in body or "response_format" in body or "tool_choice" in body:
            structure = parse_structure(body)
            if structure is not None and structure.tools:
                # As a chat template does: the tools' definitions open the prompt.
                prompt = f"<|tools|>\n{orjson.dumps(body['tools']).decode()}\n{prompt}"
    else:
        prompt = "\n".join(render_inputs(body.get("prompt"), "prompt"))
    max_tokens = _optional_int(body, "max_completion_tokens", 1)
    if max_tokens is None:
        max_tokens = _optional_int(body, "max_tokens", 1)
    stream = _flag(body, "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise BadRequest("'stream_options' must be an object", param="stream_options")
    include_usage = stream and options is not None and _flag(options, "include_usage")
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        raise BadRequest("'seed' must be an integer", param="seed")
    return GenerationRequest(model, prompt, max_tokens, stream, include_usage, seed, structure)


def parse_embedding(body: dict[str, Any]) -> EmbeddingRequest:
    model = model_of(body)
    inputs = render_inputs(body.get("input"), "input")
    encoding: Literal["float", "base64"]
    match body.get("encoding_format"):
        case None | "float":
            encoding = "float"
        case "base64":
            encoding = "base64"
        case _:
            raise BadRequest(
                "'encoding_format' must be 'float' or 'base64'", param="encoding_format"
            )
    dimensions = _optional_int(body, "dimensions", 1)
    return EmbeddingRequest(model, inputs, encoding, dimensions)


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str):
        raise BadRequest(f"'{name}' must be a string", param=name)
    return value


def parse_image(body: dict[str, Any]) -> ImageRequest:
    model = model_of(body)
    prompt = _text(body, "prompt")
    n = _optional_int(body, "n", 1) or 1
    if n > 10:
        raise BadRequest("'n' must be at most 10", param="n")
    size = body.get("size")
    if size is not None and not isinstance(size, str):
        raise BadRequest("'size' must be a string", param="size")
    fmt: Literal["b64_json", "url"]
    match body.get("response_format"):
        case None | "b64_json":
            fmt = "b64_json"
        case "url":
            fmt = "url"
        case _:
            raise BadRequest(
                "'response_format' must be 'b64_json' or 'url'", param="response_format"
            )
    return ImageRequest(model, prompt, n, size, fmt)


def parse_speech(body: dict[str, Any]) -> SpeechRequest:
    model = model_of(body)
    spoken = _text(body, "input")
    if len(spoken) > 4096:
        raise BadRequest("'input' must be at most 4096 characters", param="input")
    fmt: Literal["wav", "pcm"]
    match body.get("response_format"):
        case None | "wav":
            fmt = "wav"
        case "pcm":
            fmt = "pcm"
        case _:
            # The simulator writes no compressed audio (mp3, opus, aac, flac).
            raise BadRequest("'response_format' must be 'wav' or 'pcm'", param="response_format")
    return SpeechRequest(model, spoken, fmt)
