"""The inference routes and what the gateway reads of their requests (pure, no I/O).

A route says how its body is read (``Body``: a JSON object, or a multipart/form-data upload)
and how its answer is relayed (``Answer``: accounted JSON or SSE carrying token usage, or any
body passed through chunk by chunk as it arrives, for images and audio). The body is parsed
once (orjson) and only the fields the gateway itself reads are checked; everything else is
forwarded as the client sent it. When nothing needs changing, the client's own bytes go
upstream.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import orjson

from swarmgate.errors import BadRequest
from swarmgate.pipeline.asgi import parse_json_object
from swarmgate.pipeline.form import Form, parse_form
from swarmgate.types import ModelType


class Body(enum.StrEnum):
    JSON = "json"  # one JSON object, bounded by server.max_body_bytes
    MULTIPART = "multipart"  # multipart/form-data (a file upload), by server.max_upload_bytes


class Answer(enum.StrEnum):
    # JSON, or SSE when the request streams, with token usage the gateway counts.
    ACCOUNTED = "accounted"
    # Any body (binary audio, images JSON, a transcript), relayed as it arrives: no usage.
    RELAYED = "relayed"
    # Any body read whole, without usage: for a face that translates it (native speech).
    WHOLE = "whole"


@dataclass(frozen=True, slots=True)
class Route:
    name: str  # the metrics label: chat, completions, embeddings, images, speech...
    path: str  # the upstream path, the same as the client's
    types: frozenset[ModelType]  # the model types it serves
    required: str  # the field it must carry
    body: Body = Body.JSON
    answer: Answer = Answer.ACCOUNTED
    # The client's path when it is not the upstream's (the native face): the metrics label.
    endpoint: str = ""
    # Its stream is named events without [DONE] (the Responses API's): upstream/event_relay.
    events: bool = False

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
        Route(
            "images",
            "/v1/images/generations",
            frozenset({ModelType.IMAGE}),
            "prompt",
            answer=Answer.RELAYED,
        ),
        Route(
            "speech",
            "/v1/audio/speech",
            frozenset({ModelType.SPEECH, ModelType.AUDIO}),
            "input",
            answer=Answer.RELAYED,
        ),
        Route(
            "transcriptions",
            "/v1/audio/transcriptions",
            frozenset({ModelType.TRANSCRIPTION, ModelType.AUDIO}),
            "file",
            Body.MULTIPART,
            Answer.RELAYED,
        ),
    )
}


@dataclass(slots=True)
class InferenceRequest:
    payload: dict[str, Any]
    raw: bytes  # the client's bytes: forwarded as they are when nothing changes
    model: str | None  # as the client named it (None: the default model)
    stream: bool
    wants_usage: bool  # whether the client asked for the usage chunk of a stream
    content_type: str = "application/json"
    form: Form | None = None  # a multipart body, split into its parts
    edited: bool = False  # the payload was changed (a transform): the raw bytes are stale

    def body_for(self, upstream_model: str) -> bytes:
        """The body to send a deployment that knows the model as ``upstream_model``."""
        if not self.stream and self.model == upstream_model and not self.edited:
            return self.raw
        if self.form is not None:
            return self.form.with_field("model", upstream_model)
        self.payload["model"] = upstream_model
        try:
            return orjson.dumps(self.payload)
        except orjson.JSONEncodeError as exc:  # e.g. nested deeper than orjson writes
            raise BadRequest(f"the request body cannot be forwarded: {exc}") from None


def parse(route: Route, body: bytes) -> InferenceRequest:
    """A JSON body (``Body.JSON``)."""
    payload = parse_json_object(body)
    model = payload.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest("'model' must be a string", param="model")
    stream = payload.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise BadRequest("'stream' must be a boolean", param="stream")
    options = payload.get("stream_options")
    if options is not None:
        options = _stream_options(options)
    required = route.required
    if required not in payload:
        raise BadRequest(f"'{required}' is a required property", param=required)
    value = payload[required]
    # As OpenAI's published schema has them: "prompt" may be null (the upstream's default
    # prompt), "messages" and "input" may not; an image's prompt and speech's input are text.
    if route.answer is Answer.RELAYED:
        if not isinstance(value, str):
            raise BadRequest(f"'{required}' must be a string", param=required)
    elif required == "messages" and not isinstance(value, list):
        raise BadRequest("'messages' must be an array of message objects", param="messages")
    elif required == "input" and not isinstance(value, str | list):
        raise BadRequest("'input' must be a string or an array", param="input")
    elif required == "prompt" and value is not None and not isinstance(value, str | list):
        raise BadRequest("'prompt' must be a string, an array or null", param="prompt")
    wants_usage = False
    if stream and route.answer is Answer.ACCOUNTED:
        options = options or {}
        wants_usage = options.get("include_usage") is True
        # Always ask for usage so every stream is accounted; the relay drops the usage-only
        # chunk again when the client did not ask for it.
        payload["stream_options"] = {**options, "include_usage": True}
    # Only accounted routes are relayed as OpenAI's SSE chunks; a relayed answer (partial
    # images, say) passes through as it comes, whatever it is.
    streams = stream is True and route.answer is Answer.ACCOUNTED
    return InferenceRequest(payload, body, model, streams, wants_usage)


def _stream_options(options: object) -> dict[str, Any]:
    if not isinstance(options, dict):
        raise BadRequest("'stream_options' must be an object", param="stream_options")
    # Checked with or without a stream: "x" is no more a boolean when stream is false.
    if "include_usage" in options and not isinstance(options["include_usage"], bool):
        raise BadRequest(
            "'stream_options.include_usage' must be a boolean",
            param="stream_options.include_usage",
        )
    return options


def parse_upload(route: Route, body: bytes, content_type: str | None) -> InferenceRequest:
    """A multipart/form-data body (``Body.MULTIPART``): its text fields are the payload."""
    form = parse_form(body, content_type)
    required = form.field(route.required)
    if required is None or not required.is_file:
        raise BadRequest(f"'{route.required}' is a required file", param=route.required)
    model = form.field("model")
    name = model.content.decode("utf-8", "replace") if model is not None else None
    return InferenceRequest(form.fields(), body, name, False, False, form.content_type, form)
