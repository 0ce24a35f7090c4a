"""The OpenAPI description of the plain-ASGI routes, merged into the management app's document.

The hot path has no framework to generate it, so the paths are described here by hand; a test
checks that every route the app serves appears in the document.
"""

from __future__ import annotations

from typing import Any

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
}

_errors = {
    str(code): {
        "description": text,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    for code, text in (
        (400, "Malformed JSON or a wrong type on a field the gateway reads"),
        (401, "Missing or invalid credentials"),
        (403, "The key lacks the scope or may not use the model; or the address is blocked"),
        (404, "Unknown model (the message lists the available ones)"),
        (413, "The body exceeds server.max_body_bytes"),
        (429, "Rate limited (Retry-After)"),
        (502, "The upstream deployment failed or answered with a protocol error"),
        (503, "No deployment of the model can take the request"),
        (504, "The upstream deployment timed out"),
    )
}


def _inference(summary: str, required: list[str], streams: bool) -> dict[str, Any]:
    ok: dict[str, Any] = {
        "description": "The upstream's OpenAI-compatible answer, passed through",
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
    if streams:
        ok["content"]["text/event-stream"] = {
            "schema": {"type": "string", "description": "SSE chunks, ending with data: [DONE]"}
        }
    return {
        "post": {
            "tags": ["inference"],
            "summary": summary,
            "security": [{"bearer": []}],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": required,
                            "properties": {
                                "model": {"type": "string"},
                                "stream": {"type": "boolean"},
                                "stream_options": {"type": "object"},
                            },
                            "additionalProperties": True,
                        }
                    }
                },
            },
            "responses": {"200": ok, **_errors},
        }
    }


def _get(summary: str, tag: str, content_type: str = "application/json") -> dict[str, Any]:
    return {
        "get": {
            "tags": [tag],
            "summary": summary,
            "responses": {"200": {"description": "OK", "content": {content_type: {}}}},
        }
    }


def hot_path_paths() -> dict[str, Any]:
    models_get = _get("List the models this key may use", "models")
    models_get["get"]["security"] = [{"bearer": []}]
    model_get = _get("One model", "models")
    model_get["get"]["security"] = [{"bearer": []}]
    model_get["get"]["parameters"] = [
        {"name": "model_id", "in": "path", "required": True, "schema": {"type": "string"}}
    ]
    model_get["get"]["responses"]["404"] = _errors["404"]
    return {
        "/v1/chat/completions": _inference("Chat completion (JSON or SSE)", ["messages"], True),
        "/v1/completions": _inference("Text completion (JSON or SSE)", ["prompt"], True),
        "/v1/embeddings": _inference("Embeddings", ["input"], False),
        "/v1/models": models_get,
        "/v1/models/{model_id}": model_get,
        "/health": _get("Liveness", "operations"),
        "/health/ready": _get(
            "Readiness: usable deployments per model (503 if any has none)", "operations"
        ),
        "/models/status": _get("Deployments and usable deployments per model", "operations"),
        "/metrics": _get("Prometheus metrics", "operations", "text/plain"),
    }


def merge(document: dict[str, Any]) -> dict[str, Any]:
    document.setdefault("paths", {}).update(hot_path_paths())
    components = document.setdefault("components", {})
    components.setdefault("schemas", {})["Error"] = ERROR
    components.setdefault("securitySchemes", {})["bearer"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key (sk-sg-...) or a JWT",
    }
    return document
