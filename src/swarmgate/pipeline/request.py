"""The inference routes and what the gateway reads of their requests (pure, no I/O).

The body is parsed once (orjson) and only the fields the gateway itself reads are checked;
everything else is forwarded as the client sent it. When nothing needs changing, the client's
own bytes go upstream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from swarmgate.errors import BadRequest
from swarmgate.pipeline.asgi import parse_json_object
from swarmgate.types import ModelType


@dataclass(frozen=True, slots=True)
class Route:
    name: str  # the metrics label: chat, completions, embeddings
    path: str  # the upstream path, the same as the client's
    types: frozenset[ModelType]  # the model types it serves
    required: str  # the field it must carry
    # The client's path when it is not the upstream's (the native face): the metrics label.
    endpoint: str = ""
    answers_json: bool = True  # False: the upstream answers bytes (audio), carrying no usage

    @property
    def client_path(self) -> str:
        return self.endpoint or self.path


ROUTES = {
    r.path: r
    for r in (
        Route("chat", "/v1/chat/completions", frozenset({ModelType.CHAT}), "messages"),
        Route(
            "completions",
            "/v1/completions",
            frozenset({ModelType.CHAT, ModelType.COMPLETION}),
            "prompt",
        ),
        Route("embeddings", "/v1/embeddings", frozenset({ModelType.EMBEDDING}), "input"),
    )
}


@dataclass(slots=True)
class InferenceRequest:
    payload: dict[str, Any]
    raw: bytes  # the client's bytes: forwarded as they are when nothing changes
    model: str | None  # as the client named it (None: the default model)
    stream: bool
    wants_usage: bool  # whether the client asked for the usage chunk of a stream

    def body_for(self, upstream_model: str) -> bytes:
        """The body to send a deployment that knows the model as ``upstream_model``."""
        if not self.stream and self.model == upstream_model:
            return self.raw
        self.payload["model"] = upstream_model
        try:
            return orjson.dumps(self.payload)
        except orjson.JSONEncodeError as exc:  # e.g. nested deeper than orjson writes
            raise BadRequest(f"the request body cannot be forwarded: {exc}") from None


def parse(route: Route, body: bytes) -> InferenceRequest:
    payload = parse_json_object(body)
    model = payload.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest("'model' must be a string", param="model")
    stream = payload.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise BadRequest("'stream' must be a boolean", param="stream")
    options = payload.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise BadRequest("'stream_options' must be an object", param="stream_options")
        # Checked with or without a stream: "x" is no more a boolean when stream is false.
        if "include_usage" in options and not isinstance(options["include_usage"], bool):
            raise BadRequest(
                "'stream_options.include_usage' must be a boolean",
                param="stream_options.include_usage",
            )
    required = route.required
    if required not in payload:
        raise BadRequest(f"'{required}' is a required property", param=required)
    value = payload[required]
    # As OpenAI's published schema has them: "prompt" may be null (the upstream's default
    # prompt), "messages" and "input" may not.
    if required == "messages" and not isinstance(value, list):
        raise BadRequest("'messages' must be an array of message objects", param="messages")
    if required == "input" and not isinstance(value, str | list):
        raise BadRequest("'input' must be a string or an array", param="input")
    if required == "prompt" and value is not None and not isinstance(value, str | list):
        raise BadRequest("'prompt' must be a string, an array or null", param="prompt")
    wants_usage = False
    if stream:
        options = options or {}
        wants_usage = options.get("include_usage") is True
        # Always ask for usage so every stream is accounted; the relay drops the usage-only
        # chunk again when the client did not ask for it.
        payload["stream_options"] = {**options, "include_usage": True}
    return InferenceRequest(payload, body, model, stream is True, wants_usage)
