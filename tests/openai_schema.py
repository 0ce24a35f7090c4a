"""OpenAI's published OpenAPI document (../shared/openai-openapi.json) as JSON Schema validators.

The document marks nulls the OpenAPI 3.0 way (``nullable: true``), although it says 3.1; each
such schema is rewritten to accept null, so that what a real OpenAI endpoint sends validates.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

# Beside the repository (../shared), also from a git worktree of it further down (/work/wt/x).
SPEC = next(
    (
        p / "shared" / "openai-openapi.json"
        for p in Path(__file__).resolve().parents[1:]
        if (p / "shared" / "openai-openapi.json").exists()
    ),
    Path(__file__).resolve().parents[2] / "shared" / "openai-openapi.json",
)


def _nullable(node: Any) -> Any:
    if isinstance(node, list):
        return [_nullable(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _nullable(v) for k, v in node.items() if k != "nullable"}
    if node.get("nullable") is True:
        return {"anyOf": [out, {"type": "null"}]}
    return out


@cache
def _components() -> dict[str, Any]:
    spec = json.loads(SPEC.read_text())
    schemas = spec["components"]["schemas"]
    # The document has no schema of its own for a streamed legacy completion: its chunks are
    # CreateCompletionResponse objects, but before the last one OpenAI sends
    # "finish_reason": null (and "usage": null when usage was asked for), as for chat chunks.
    chunk = json.loads(json.dumps(schemas["CreateCompletionResponse"]))
    chunk["properties"]["choices"]["items"]["properties"]["finish_reason"]["nullable"] = True
    chunk["properties"]["choices"]["items"]["properties"]["finish_reason"]["enum"].append(None)
    chunk["properties"]["usage"]["nullable"] = True
    schemas["CompletionStreamChunk"] = chunk
    return {"components": _nullable(spec["components"])}


def validator(schema_name: str) -> Draft202012Validator:
    """A validator for ``#/components/schemas/<schema_name>``."""
    root = {**_components(), "$ref": f"#/components/schemas/{schema_name}"}
    return Draft202012Validator(root)


def problems(schema_name: str, instance: object) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator(schema_name).iter_errors(instance)
    ]
