"""OpenAI's wire format, as vLLM sends it: completion objects, SSE chunks, error bodies.

Stream chunks are assembled from byte templates prepared once per response rather than by
serialising a dict per token: a thousand concurrent streams spend their CPU here.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from typing import Any

import orjson

from swarmgate.sim.tools import ToolCall
from swarmgate.types import JSON, Usage

DONE = b"data: [DONE]\n\n"


def completion_id(prefix: str) -> str:
    return f"{prefix}-{os.urandom(12).hex()}"


def usage_json(usage: Usage, cached_tokens: int | None = None) -> JSON:
    """OpenAI's ``CompletionUsage``; with ``cached_tokens``, the prompt's prefix-cache hit in
    ``prompt_tokens_details`` (as vLLM reports it with ``--enable-prompt-tokens-details``)."""
    body: JSON = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }
    if cached_tokens is not None:
        body["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    return body


def error_json(status: int, message: str, code: str | None = None) -> JSON:
    kind = "invalid_request_error" if status < 500 else "api_error"
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def tool_call_json(call: ToolCall) -> JSON:
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }


def chat_completion(
    *,
    id: str,
    created: int,
    model: str,
    text: str | None,
    finish_reason: str,
    usage: Usage,
    cached_tokens: int | None = None,
    tool_calls: Sequence[ToolCall] = (),
) -> JSON:
    """With ``tool_calls``, ``text`` is None, as OpenAI sends a message that calls tools."""
    return {
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                # OpenAI's schema requires "refusal" (null when the model did not refuse).
                "message": {
                    "role": "assistant",
                    "content": text,
                    "refusal": None,
                    "tool_calls": [tool_call_json(c) for c in tool_calls],
                },
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage_json(usage, cached_tokens),
    }


def text_completion(
    *,
    id: str,
    created: int,
    model: str,
    text: str,
    finish_reason: str,
    usage: Usage,
    cached_tokens: int | None = None,
) -> JSON:
    return {
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}],
        "usage": usage_json(usage, cached_tokens),
    }


class ChunkFormat:
    """The SSE events of one streamed response (``chat.completion.chunk`` or
    ``text_completion``), with ``"usage": null`` in every chunk when usage was requested."""

    def __init__(
        self, *, chat: bool, id: str, created: int, model: str, include_usage: bool
    ) -> None:
        self.chat = chat
        self.include_usage = include_usage
        envelope = orjson.dumps(
            {
                "id": id,
                "object": "chat.completion.chunk" if chat else "text_completion",
                "created": created,
                "model": model,
            }
        )
        self._envelope = envelope
        self._head = b"data: " + envelope[:-1] + b',"choices":[{"index":0,'
        self._head += b'"delta":{"content":' if chat else b'"text":'
        self._close = b"}" if chat else b""
        self._tail = b"}]" + (b',"usage":null' if include_usage else b"") + b"}\n\n"

    def role(self) -> bytes:
        """The opening chat chunk: the assistant role and empty content."""
        return self._chunk({"role": "assistant", "content": ""}, None)

    def token(self, text: str, finish_reason: str | None = None) -> bytes:
        finish = b"null" if finish_reason is None else orjson.dumps(finish_reason)
        return (
            self._head
            + orjson.dumps(text)
            + self._close
            + b',"logprobs":null,"finish_reason":'
            + finish
            + self._tail
        )

    def usage(self, usage: Usage, cached_tokens: int | None = None) -> bytes:
        """OpenAI's final usage-only chunk: no choices."""
        return (
            b"data: "
            + self._envelope[:-1]
            + b',"choices":[],"usage":'
            + orjson.dumps(usage_json(usage, cached_tokens))
            + b"}\n\n"
        )

    def tool_call(self, index: int, call: ToolCall) -> bytes:
        """A tool call's first chunk: its id and name, no arguments yet; the first call's
        also opens the message, as OpenAI's does (role, and no content)."""
        head: JSON = {
            "index": index,
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        if index == 0:
            delta = {"role": "assistant", "content": None, "tool_calls": [head], "refusal": None}
            return self._chunk(delta, None)
        return self._chunk({"tool_calls": [head]}, None)

    def arguments(self, index: int, fragment: str) -> bytes:
        """A fragment of tool call ``index``'s arguments (its JSON text, cut anywhere)."""
        return self._chunk(
            {"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}, None
        )

    def finish(self, finish_reason: str) -> bytes:
        """The closing chunk of a tool-calling message: an empty delta and the reason."""
        return self._chunk({}, finish_reason)

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        body = orjson.loads(self._envelope)
        body["choices"] = [choice]
        if self.include_usage:
            body["usage"] = None
        return b"data: " + orjson.dumps(body) + b"\n\n"


def model_list(models: list[tuple[str, int]], created: int) -> JSON:
    """``GET /v1/models``; ``models`` is ``(id, max_model_len)`` pairs."""
    return {"object": "list", "data": [model_card(m, n, created) for m, n in models]}


def model_card(model: str, max_model_len: int, created: int) -> JSON:
    return {
        "id": model,
        "object": "model",
        "created": created,
        "owned_by": "swarmgate-sim",
        "root": model,
        "parent": None,
        "max_model_len": max_model_len,
    }


def embedding_list(
    model: str, embeddings: list[list[float]] | list[str], prompt_tokens: int
) -> JSON:
    """``POST /v1/embeddings``; base64 embeddings arrive already encoded as strings."""
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(embeddings)
        ],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def images_response(created: int, images: list[bytes], response_format: str) -> JSON:
    """``POST /v1/images/generations``: each PNG as base64, or as a data URL."""
    encoded = [base64.b64encode(image).decode("ascii") for image in images]
    if response_format == "url":
        data = [{"url": "data:image/png;base64," + e} for e in encoded]
    else:
        data = [{"b64_json": e} for e in encoded]
    return {"created": created, "data": data, "output_format": "png"}


def transcription(text: str, seconds: float, *, verbose: bool) -> JSON:
    """``POST /v1/audio/transcriptions`` as ``json`` or ``verbose_json``."""
    usage = {"type": "duration", "seconds": seconds}
    if verbose:
        return {"language": "english", "duration": seconds, "text": text, "usage": usage}
    return {"text": text, "usage": usage}
