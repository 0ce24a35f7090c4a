"""The OpenAPI description of the model download routes (``api/native_downloads.py``), in the
native face's error schema; merged into the document by ``openapi.merge``. The request schema
is exactly the checks of ``parse_download``."""

from __future__ import annotations

from typing import Any

from swarmgate.api.native_downloads import MAX_NAME, MODEL_NAME
from swarmgate.api.openapi_native import AUTH_ERRORS, error, path_parameter
from swarmgate.jobs.downloads import PRIORITIES, SOURCES
from swarmgate.store.downloads import DownloadStatus

_REQUEST_ID = {
    "description": "The request's id: the client's X-Request-ID if valid, else a new one",
    "required": True,
    "schema": {"type": "string"},
}
DOWNLOAD_REQUEST = {
    "type": "object",
    "required": ["model_name"],
    "properties": {
        "model_name": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_NAME,
            "pattern": f"^{MODEL_NAME.pattern}$",
            "description": "An Ollama name (llama3.2:1b) or, with source huggingface, owner/repo",
        },
        "source": {"enum": list(SOURCES), "default": "ollama"},
        "priority": {"enum": list(PRIORITIES), "default": "normal"},
    },
}
_COUNT = {"type": ["integer", "null"], "minimum": 0}
MODEL_DOWNLOAD = {
    "type": "object",
    "required": [
        "id",
        "model_name",
        "source",
        "pull_name",
        "priority",
        "status",
        "progress",
        "error",
        "requested_by",
        "created_at",
        "updated_at",
    ],
    "properties": {
        "id": {"type": "string"},
        "model_name": {"type": "string"},
        "source": {"enum": list(SOURCES)},
        "pull_name": {"type": "string", "description": "The name pulled on the Ollama server"},
        "priority": {"enum": list(PRIORITIES)},
        "status": {"enum": [s.value for s in DownloadStatus]},
        "progress": {
            "type": "object",
            "required": ["total_bytes", "completed_bytes", "percent", "status"],
            "properties": {
                "total_bytes": _COUNT,
                "completed_bytes": _COUNT,
                "percent": {"type": ["number", "null"]},
                "status": {"type": ["string", "null"], "description": "Ollama's last line"},
            },
        },
        "error": {"type": ["string", "null"]},
        "requested_by": {"type": ["string", "null"], "description": "The key id that asked"},
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
    },
}


def _job(description: str, location: bool = False) -> dict[str, Any]:
    headers: dict[str, Any] = {"X-Request-ID": _REQUEST_ID}
    if location:
        headers["Location"] = {
            "description": "Where the job is read: /api/v1/models/download/{id}",
            "required": True,
            "schema": {"type": "string"},
        }
    return {
        "description": description,
        "headers": headers,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ModelDownload"}}},
    }


def download_paths() -> dict[str, Any]:
    create = {
        "post": {
            "tags": ["native"],
            "summary": "Download a model onto the Ollama server (needs cluster:write)",
            "security": [{"bearer": []}],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": DOWNLOAD_REQUEST}},
            },
            "responses": {
                "202": _job("The job, stored and queued on this replica", location=True),
                "400": error("Malformed JSON or a bad field (INVALID_JSON, INVALID_REQUEST)"),
                **AUTH_ERRORS,
                "408": error("The request body stalled (REQUEST_TIMEOUT)"),
                "413": error("The body exceeds server.max_body_bytes (PAYLOAD_TOO_LARGE)"),
                "429": error("This replica's download queue is full (RATE_LIMITED)"),
                "503": error(
                    "No native.ollama_url configured, or the store is down (SERVICE_UNAVAILABLE)"
                ),
            },
        }
    }
    status = {
        "get": {
            "tags": ["native"],
            "summary": "A download job, from the shared store (needs cluster:write)",
            "security": [{"bearer": []}],
            "parameters": [path_parameter("id")],
            "responses": {
                "200": _job("The job as last written"),
                **AUTH_ERRORS,
                "404": error("No such download (NOT_FOUND)"),
            },
        }
    }
    return {"/api/v1/models/download": create, "/api/v1/models/download/{id}": status}


def components() -> dict[str, Any]:
    return {"ModelDownload": MODEL_DOWNLOAD}
