"""The OpenAPI document: the plain-ASGI routes described by hand, merged into the document the
management app generates, and that document corrected to say what the code answers.

The hot path has no framework to generate it, so its paths are described here; a test checks
that every route the app serves appears in the document, and a schemathesis run (tests/api/
test_contract.py) that every status, content type and documented header is what the gateway
really sends. So: each operation lists its real error statuses with the error schema; FastAPI's
422 is replaced by the 400 our validation handler answers; request schemas are as strict as the
checks of ``pipeline.request.parse`` (and no stricter: everything else is the upstream's to
judge, and an upstream 4xx is passed through, hence ``4XX``).
"""

from __future__ import annotations

from typing import Any

from swarmgate.api import openapi_downloads, openapi_native

ERROR = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
                "request_id": {"type": "string"},
            },
            "required": ["message", "type"],
        }
    },
    "required": ["error"],
}

_REQUEST_ID = {
    "description": "The request's id: the client's X-Request-ID if valid, else a new one",
    "required": True,
    "schema": {"type": "string"},
}
_RETRY_AFTER = {"description": "Seconds until a temporary block ends", "schema": {"type": "string"}}
_ALLOW = {
    "description": "The methods the path serves",
    "required": True,
    "schema": {"type": "string"},
}


def error(description: str, **headers: dict[str, Any]) -> dict[str, Any]:
    """A response in our error schema, with the request id header (and ``headers``)."""
    return {
        "description": description,
        "headers": {"X-Request-ID": _REQUEST_ID, **headers},
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


INVALID = error("Malformed JSON, a wrong type or a value out of range")
UNAUTHORIZED = error("Missing, malformed, unknown, expired or revoked credentials")
FORBIDDEN = error(
    "The key lacks the scope or may not use the model; or the address is blocked",
    **{"Retry-After": _RETRY_AFTER},
)
NOT_FOUND = error("No such resource")
STORE_DOWN = error("The key store cannot be reached")
METHOD_NOT_ALLOWED = error("The path does not serve this method", Allow=_ALLOW)

# What any authenticated route may answer before it runs: the key check and the scope check.
AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: UNAUTHORIZED,
    403: FORBIDDEN,
    503: STORE_DOWN,
}

_INFERENCE_ERRORS = {
    "400": INVALID,
    "401": UNAUTHORIZED,
    "403": FORBIDDEN,
    "404": error("Unknown model (the message lists the available ones)"),
    "408": error("The request body stalled (under granian; uvicorn closes the connection)"),
    "413": error("The body exceeds server.max_body_bytes"),
    "429": {
        "description": "A limit refused the request before any model saw it (the error "
        "schema, type requests or tokens, code rate_limit_exceeded; docs/limits.md), or the "
        "deployment's own 429 passed through",
        "headers": {
            "X-Request-ID": _REQUEST_ID,
            "Retry-After": {"description": "Seconds to wait", "schema": {"type": "string"}},
            "retry-after-ms": {
                "description": "Milliseconds to wait",
                "schema": {"type": "string"},
            },
        },
        "content": {"application/json": {"schema": {}}},
    },
    "4XX": {
        "description": "The deployment's own refusal (say, a prompt too long), passed through",
        "headers": {"X-Request-ID": _REQUEST_ID},
        "content": {"application/json": {"schema": {}}},
    },
    "502": error("The upstream deployment failed or answered with a protocol error"),
    "503": error("No deployment of the model can take the request; or the key store is down"),
    "504": error("The upstream deployment timed out"),
}

_NULLABLE_STRING = {"type": ["string", "null"]}
_TEXT_OR_ARRAY = {"oneOf": [{"type": "string"}, {"type": "array"}]}
# The fields ``parse`` reads, typed as it checks them; the others are forwarded untouched.
_READ_FIELDS: dict[str, Any] = {
    "model": {**_NULLABLE_STRING, "description": "A model id or alias; null: the default model"},
    "stream": {"type": ["boolean", "null"]},
    "stream_options": {
        "type": ["object", "null"],
        "properties": {"include_usage": {"type": "boolean"}},
    },
}
_REQUIRED_FIELD = {
    "messages": {"type": "array", "description": "The conversation (the upstream checks items)"},
    "prompt": {
        "oneOf": [{"type": "string"}, {"type": "array"}, {"type": "null"}],
        "description": "A string, strings or token ids; null: the model's default prompt",
    },
    "input": {**_TEXT_OR_ARRAY, "description": "A string, strings or token ids"},
}


_RELAYED_OK = {
    "description": "The deployment's answer, relayed as it arrives",
    "headers": {"X-Request-ID": _REQUEST_ID},
}
_BINARY = {"schema": {"type": "string", "format": "binary"}}


def _relayed(
    summary: str, request: dict[str, Any], answers: dict[str, Any], **errors: Any
) -> dict[str, Any]:
    """Images and audio: the answer is the deployment's, with no token usage."""
    return {
        "post": {
            "tags": ["inference"],
            "summary": summary,
            "security": [{"bearer": []}],
            "requestBody": {"required": True, "content": request},
            "responses": {
                "200": {**_RELAYED_OK, "content": answers},
                **_INFERENCE_ERRORS,
                **errors,
            },
        }
    }


def _json_request(required: str, description: str) -> dict[str, Any]:
    schema = {
        "type": "object",
        "required": [required],
        "properties": {
            "model": _READ_FIELDS["model"],
            required: {"type": "string", "description": description},
        },
        "additionalProperties": True,
    }
    return {"application/json": {"schema": schema}}


_UPLOAD = {
    "multipart/form-data": {
        "schema": {
            "type": "object",
            "required": ["file"],
            "properties": {
                "file": {"type": "string", "format": "binary", "description": "The audio"},
                "model": {"type": "string", "description": "A model id or alias"},
                "response_format": {"type": "string"},
            },
        }
    }
}


def _modalities() -> dict[str, Any]:
    return {
        "/v1/images/generations": _relayed(
            "Image generation (OpenAI's ImagesResponse)",
            _json_request("prompt", "What to draw"),
            {"application/json": {"schema": {"type": "object"}}},
        ),
        "/v1/audio/speech": _relayed(
            "Text to speech: the audio, streamed as the deployment sends it",
            _json_request("input", "The text to say"),
            {
                "audio/wav": _BINARY,
                "audio/pcm": _BINARY,
                "audio/mpeg": _BINARY,
                "application/octet-stream": _BINARY,
            },
        ),
        "/v1/audio/transcriptions": _relayed(
            "Speech to text, from a multipart/form-data upload",
            _UPLOAD,
            {
                "application/json": {"schema": {"type": "object"}},
                "text/plain": {"schema": {"type": "string"}},
            },
            **{"413": error("The upload exceeds server.max_upload_bytes")},
        ),
    }


def _responses() -> dict[str, Any]:
    """The Responses API (docs/agents.md): created like any inference, read and deleted when
    stored (the key's own; anyone else's is a 404)."""
    create = _inference(
        "The Responses API: a response, JSON or SSE events (passed through to deployments "
        "that serve it, else translated to chat completions)",
        "input",
        True,
    )
    create["post"]["responses"]["404"] = error(
        "Unknown model, or no stored response of this key by previous_response_id"
    )
    unknown = error("No stored response of this key by that id")
    auth = {str(k): v for k, v in AUTH_ERRORS.items()}
    stored = _json("The stored response", {"type": "object"})
    deleted = _json(
        "Deleted",
        {
            "type": "object",
            "required": ["id", "object", "deleted"],
            "properties": {
                "id": {"type": "string"},
                "object": {"const": "response.deleted"},
                "deleted": {"const": True},
            },
        },
    )
    items = _json(
        "The request's own input items, newest first",
        {
            "type": "object",
            "required": ["object", "data"],
            "properties": {"object": {"const": "list"}},
        },
    )
    one = {
        **_get("A stored response", "inference", stored, **auth, **{"404": unknown}),
        "delete": {
            "tags": ["inference"],
            "summary": "Delete a stored response",
            "responses": {"200": deleted, **auth, "404": unknown},
        },
    }
    listed = _get("A stored response's input items", "inference", items, **auth, **{"404": unknown})
    for operation in (*one.values(), *listed.values()):
        operation["security"] = [{"bearer": []}]
        operation["parameters"] = [
            {"name": "response_id", "in": "path", "required": True, "schema": {"type": "string"}}
        ]
    return {
        "/v1/responses": create,
        "/v1/responses/{response_id}": one,
        "/v1/responses/{response_id}/input_items": listed,
    }


def _inference(summary: str, required: str, streams: bool) -> dict[str, Any]:
    ok: dict[str, Any] = {
        "description": "The upstream's OpenAI-compatible answer, passed through",
        "headers": {"X-Request-ID": _REQUEST_ID},
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
    if streams:
        # The schema of one event, as SSE parsers (and schemathesis) see the stream.
        ok["content"]["text/event-stream"] = {
            "schema": {
                "type": "object",
                "required": ["data"],
                "properties": {"data": {"type": "string"}},
                "description": "An event: a chunk (or an error) in JSON; the last is [DONE]",
            }
        }
    schema = {
        "type": "object",
        "required": [required],
        "properties": {**_READ_FIELDS, required: _REQUIRED_FIELD[required]},
        "additionalProperties": True,
    }
    return {
        "post": {
            "tags": ["inference"],
            "summary": summary,
            "security": [{"bearer": []}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
            "responses": {"200": ok, **_INFERENCE_ERRORS},
        }
    }


_MODEL = {
    "type": "object",
    "required": ["id", "object", "created", "owned_by"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "model"},
        "created": {"type": "integer"},
        "owned_by": {"type": "string"},
        "type": {"type": "string"},
        "capabilities": {"type": "array", "items": {"type": "string"}},
        "aliases": {"type": "array", "items": {"type": "string"}},
        "deployments": {"type": "integer"},
    },
}
_STATUS = {
    "type": "object",
    "required": ["status", "models"],
    "properties": {
        "status": {"enum": ["ready", "not_ready"]},
        "models": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "properties": {
                    "balancer": {"type": "string"},
                    "deployments": {"type": "integer"},
                    "usable": {"type": "integer"},
                    "healthy": {"type": "integer"},
                    "down": {"type": "object", "additionalProperties": {"type": "string"}},
                },
            },
        },
    },
}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _get(summary: str, tag: str, ok: dict[str, Any], **errors: dict[str, Any]) -> dict[str, Any]:
    return {"get": {"tags": [tag], "summary": summary, "responses": {"200": ok, **errors}}}


def _models(summary: str, ok: dict[str, Any], **errors: dict[str, Any]) -> dict[str, Any]:
    operation = _get(summary, "models", ok, **{str(k): v for k, v in AUTH_ERRORS.items()}, **errors)
    operation["get"]["security"] = [{"bearer": []}]
    ok["headers"] = {"X-Request-ID": _REQUEST_ID}
    return operation


def hot_path_paths() -> dict[str, Any]:
    model_list = {
        "type": "object",
        "required": ["object", "data"],
        "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": _MODEL}},
    }
    model_get = _models("One model", _json("The model", _MODEL), **{"404": NOT_FOUND})
    model_get["get"]["parameters"] = [
        {"name": "model_id", "in": "path", "required": True, "schema": {"type": "string"}}
    ]
    check = {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}}
    health = {
        "type": "object",
        "required": ["status", "gateway", "version", "models", "timestamp", "checks"],
        "properties": {
            "status": {"enum": ["healthy", "degraded", "unhealthy"]},
            "gateway": {"type": "string"},
            "version": {"type": "string"},
            "models": {"type": "array", "items": {"type": "string"}},
            "timestamp": {"type": "string", "format": "date-time"},
            "checks": {
                "type": "object",
                "required": ["database", "redis", "models"],
                "properties": {
                    "database": check,
                    "redis": check,
                    "models": {
                        "type": "object",
                        "additionalProperties": {
                            "type": "object",
                            "required": ["status", "deployments", "healthy"],
                            "properties": {
                                "status": {"enum": ["healthy", "degraded", "unhealthy"]},
                                "deployments": {"type": "integer"},
                                "healthy": {"type": "integer"},
                            },
                        },
                    },
                },
            },
        },
    }
    health_op = _get(
        "Health: the database, Redis and each model's deployments (no I/O per call)",
        "operations",
        _json("Healthy or degraded (still serving)", health),
        **{"503": _json("Unhealthy: nothing can be served, or starting or stopping", health)},
    )
    live = {
        "type": "object",
        "required": ["status", "version"],
        "properties": {"status": {"const": "alive"}, "version": {"type": "string"}},
    }
    root = {
        "type": "object",
        "required": ["name", "version", "links"],
        "properties": {
            "name": {"type": "string"},
            "service": {"type": "string"},
            "version": {"type": "string"},
            "description": {"type": "string"},
            "links": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }
    metrics = {"description": "Prometheus text format", "content": {"text/plain": {}}}
    return {
        "/v1/chat/completions": _inference("Chat completion (JSON or SSE)", "messages", True),
        "/v1/completions": _inference("Text completion (JSON or SSE)", "prompt", True),
        "/v1/embeddings": _inference("Embeddings", "input", False),
        **_responses(),
        **_modalities(),
        "/v1/models": _models("List the models this key may use", _json("The models", model_list)),
        "/v1/models/{model_id}": model_get,
        "/": _get("What this is: name, version and links", "operations", _json("OK", root)),
        "/health": health_op,
        "/gateway/health": health_op,
        "/health/live": _get("Liveness: checks nothing", "operations", _json("Alive", live)),
        "/health/ready": _get(
            "Readiness: usable deployments per model",
            "operations",
            _json("Ready", _STATUS),
            **{"503": _json("Not ready yet (starting or stopping)", _STATUS)},
        ),
        "/models/status": _get(
            "Deployments and usable deployments per model", "operations", _json("OK", _STATUS)
        ),
        "/metrics": _get("Prometheus metrics", "operations", metrics),
    }


def _validation_is_a_400(document: dict[str, Any]) -> None:
    """FastAPI documents a 422 wherever it validates; our handler answers those with a 400 in
    the error schema, so that is what the document says."""
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            if responses.pop("422", None) is not None:
                responses.setdefault("400", INVALID)
    schemas = document.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)


def merge(document: dict[str, Any]) -> dict[str, Any]:
    _validation_is_a_400(document)
    document.setdefault("paths", {}).update(hot_path_paths())
    document["paths"].update(openapi_native.native_paths())
    document["paths"].update(openapi_native.model_paths())
    document["paths"].update(openapi_downloads.download_paths())
    components = document.setdefault("components", {})
    components.setdefault("schemas", {})["Error"] = ERROR
    components["schemas"].update(openapi_native.components())
    components["schemas"].update(openapi_downloads.components())
    components.setdefault("responses", {})["MethodNotAllowed"] = METHOD_NOT_ALLOWED
    components.setdefault("securitySchemes", {})["bearer"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key (sk-sg-...) or a JWT",
    }
    document.setdefault("info", {})["description"] = (
        document["info"].get("description", "")
        + "\n\nEvery error is JSON in the Error schema, with the request id. A method a path does"
        " not serve is answered 405 with an `Allow` header (components/responses/"
        "MethodNotAllowed)."
    )
    return document
