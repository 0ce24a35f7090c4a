"""The OpenAPI description of the native ``/api/v1`` face (plain ASGI, described by hand), in
seed 001's shapes; merged into the document by ``openapi.merge``. Request schemas are exactly
the checks of ``pipeline/native_request.py``; every error is in the ``NativeError`` schema."""

from __future__ import annotations

from typing import Any

from swarmgate.pipeline.native_request import MAX_SPEECH_CHARS, MAX_STOP_SEQUENCES, SPEECH_FORMATS

_REQUEST_ID = {
    "description": "The request's id: the client's X-Request-ID if valid, else a new one",
    "required": True,
    "schema": {"type": "string"},
}
NATIVE_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "details", "request_id", "timestamp"],
            "properties": {
                "code": {"type": "string", "description": "See docs/api.md for every code"},
                "message": {"type": "string"},
                "details": {"type": "object"},
                "request_id": {"type": "string"},
                "timestamp": {"type": "string", "format": "date-time"},
            },
        }
    },
}
INFERENCE_RESPONSE = {
    "type": "object",
    "required": ["task_id", "status", "result", "created_at", "completed_at"],
    "properties": {
        "task_id": {"type": "string"},
        "status": {"enum": ["completed", "failed"]},
        "result": {"type": ["object", "null"]},
        "processing_time": {"type": ["number", "null"]},
        "worker_id": {"type": ["string", "null"]},
        "created_at": {"type": "string", "format": "date-time"},
        "completed_at": {"type": ["string", "null"], "format": "date-time"},
    },
}


def error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {"X-Request-ID": _REQUEST_ID},
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/NativeError"}}},
    }


AUTH_ERRORS = {
    "401": error("Missing, malformed, unknown, expired or revoked credentials (UNAUTHORIZED)"),
    "403": error("The key lacks the route's scope or the model (FORBIDDEN, MODEL_NOT_ALLOWED)"),
    "503": error("The key store cannot be reached (SERVICE_UNAVAILABLE)"),
}
_INFERENCE_ERRORS = {
    "400": error("Malformed JSON or a field out of its range (INVALID_JSON, INVALID_REQUEST)"),
    **AUTH_ERRORS,
    "404": error("Unknown model (INVALID_MODEL; details list the available ones)"),
    "408": error("The request body stalled (REQUEST_TIMEOUT)"),
    "413": error("The body exceeds server.max_body_bytes (PAYLOAD_TOO_LARGE)"),
    "4XX": error("The deployment's own refusal, with its status (UPSTREAM_REJECTED)"),
    "502": error("The deployment failed (INFERENCE_FAILED, BACKEND_UNREACHABLE)"),
    "503": error("No deployment can take it, or the key store is down (MODEL_UNAVAILABLE)"),
    "504": error("The deployment timed out (INFERENCE_TIMEOUT)"),
}
_MODEL = {"type": ["string", "null"], "description": "A model id or alias; null: the default"}
_INT = {"type": "integer"}
_NUM = {"type": "number"}


def _range(base: dict[str, Any], low: float, high: float, default: Any) -> dict[str, Any]:
    return {**base, "minimum": low, "maximum": high, "default": default}


TEXT_REQUEST = {
    "type": "object",
    "required": ["prompt"],
    "properties": {
        "model": _MODEL,
        "prompt": {"type": "string"},
        "max_tokens": _range(_INT, 1, 1_000_000, 512),
        "temperature": _range(_NUM, 0, 2, 0.7),
        "top_p": _range(_NUM, 0, 1, 0.9),
        "top_k": {"type": ["integer", "null"], "minimum": 1, "maximum": 1_000_000},
        "stop_sequences": {
            "type": ["array", "null"],
            "items": {"type": "string"},
            "maxItems": MAX_STOP_SEQUENCES,
        },
        "stream": {"type": "boolean", "default": False},
    },
}
IMAGE_REQUEST = {
    "type": "object",
    "required": ["prompt"],
    "properties": {
        "model": _MODEL,
        "prompt": {"type": "string"},
        "width": _range(_INT, 64, 4096, 1024),
        "height": _range(_INT, 64, 4096, 1024),
        "steps": _range(_INT, 1, 500, 50),
        "guidance_scale": _range(_NUM, 0, 50, 7.5),
        "negative_prompt": {"type": ["string", "null"]},
        "seed": {"type": ["integer", "null"], "minimum": 0, "maximum": 2**63 - 1},
    },
}
SPEECH_REQUEST = {
    "type": "object",
    "required": ["text"],
    "properties": {
        "model": _MODEL,
        "text": {"type": "string", "minLength": 1, "maxLength": MAX_SPEECH_CHARS},
        "voice": {"type": "string", "default": "alloy"},
        "language": {"type": ["string", "null"]},
        "speed": _range(_NUM, 0.25, 4, 1.0),
        "format": {"enum": list(SPEECH_FORMATS), "default": "mp3"},
    },
}
_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {"event": {"enum": ["token", "done", "error"]}, "data": {"type": "string"}},
    "description": "token: {task_id, index, text}; done: an InferenceResponse; error: an error",
}


def _ok(description: str, streams: bool = False) -> dict[str, Any]:
    content: dict[str, Any] = {
        "application/json": {"schema": {"$ref": "#/components/schemas/InferenceResponse"}}
    }
    if streams:
        content["text/event-stream"] = {"schema": _EVENT}
    return {
        "description": description,
        "headers": {"X-Request-ID": _REQUEST_ID},
        "content": content,
    }


def _inference(summary: str, schema: dict[str, Any], streams: bool = False) -> dict[str, Any]:
    return {
        "post": {
            "tags": ["native"],
            "summary": summary,
            "security": [{"bearer": []}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
            "responses": {
                "200": _ok("The answer (kept for GET .../{task_id})", streams),
                **_INFERENCE_ERRORS,
            },
        }
    }


def path_parameter(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def get(summary: str, ok: dict[str, Any], **errors: dict[str, Any]) -> dict[str, Any]:
    return {
        "get": {
            "tags": ["native"],
            "summary": summary,
            "security": [{"bearer": []}],
            "responses": {"200": ok, **AUTH_ERRORS, **errors},
        }
    }


def native_paths() -> dict[str, Any]:
    task = get(
        "A kept answer, to the caller it was given to",
        _ok("The InferenceResponse"),
        **{"404": error("Unknown, expired or another caller's task (NOT_FOUND)")},
    )
    task["get"]["parameters"] = [path_parameter("task_id")]
    return {
        "/api/v1/inference/text-generation": _inference(
            "Text generation (JSON, or SSE with stream: true)", TEXT_REQUEST, streams=True
        ),
        "/api/v1/inference/image-generation": _inference("Image generation", IMAGE_REQUEST),
        "/api/v1/inference/text-to-speech": _inference("Text to speech", SPEECH_REQUEST),
        "/api/v1/inference/{task_id}": task,
    }


MODEL_INFO = {
    "type": "object",
    "required": [
        "model_id",
        "name",
        "type",
        "description",
        "size",
        "status",
        "capabilities",
        "supported_parameters",
    ],
    "properties": {
        "model_id": {"type": "string"},
        "name": {"type": "string"},
        "type": {"enum": ["text", "image", "audio"]},
        "description": {"type": "string"},
        "size": {"type": "string"},
        "status": {"enum": ["available", "busy"]},
        "capabilities": {"type": "array", "items": {"type": "string"}},
        "supported_parameters": {"type": "object"},
        "aliases": {"type": "array", "items": {"type": "string"}},
        "deployments": {"type": "integer"},
    },
}
_MODEL_LIST = {
    "type": "object",
    "required": ["models", "total", "limit", "offset"],
    "properties": {
        "models": {"type": "array", "items": {"$ref": "#/components/schemas/ModelInfo"}},
        "total": {"type": "integer"},
        "limit": {"type": "integer"},
        "offset": {"type": "integer"},
    },
}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {"X-Request-ID": _REQUEST_ID},
        "content": {"application/json": {"schema": schema}},
    }


def _query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema}


def model_paths() -> dict[str, Any]:
    listing = get(
        "Models this key may use, filtered and paged",
        _json("A page of models", _MODEL_LIST),
        **{"400": error("A filter or bound out of range (INVALID_REQUEST)")},
    )
    listing["get"]["parameters"] = [
        _query("type", {"enum": ["text", "image", "audio"]}),
        _query("status", {"enum": ["available", "busy"]}),
        _query("limit", {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}),
        _query("offset", {"type": "integer", "minimum": 0, "maximum": 2**31 - 1, "default": 0}),
    ]
    one = get(
        "One model",
        _json("The model", {"$ref": "#/components/schemas/ModelInfo"}),
        **{"404": error("No such model, or not one this key may use (NOT_FOUND)")},
    )
    one["get"]["parameters"] = [path_parameter("model_id")]
    return {"/api/v1/models": listing, "/api/v1/models/{model_id}": one}


def components() -> dict[str, Any]:
    return {
        "NativeError": NATIVE_ERROR,
        "InferenceResponse": INFERENCE_RESPONSE,
        "ModelInfo": MODEL_INFO,
    }
