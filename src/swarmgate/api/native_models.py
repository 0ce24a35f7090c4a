"""The native model routes: ``GET /api/v1/models`` (``type``, ``status``, ``limit``,
``offset``) and ``GET /api/v1/models/{model_id}``, in seed 001's ``ModelInfo`` shape.

Seed 001's types map onto the config's: ``text`` is chat, completion and embedding models,
``image`` and ``audio`` are themselves. A model's status is derived from its deployments'
state: ``available`` while one of them can take a request, ``busy`` while all are at their
``max_concurrent``. Both routes need ``models:read``, and list only the models the key may use.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from swarmgate.api.native import authenticate
from swarmgate.auth.roles import require
from swarmgate.errors import BadRequest, GatewayError, NotFound
from swarmgate.pipeline.asgi import Headers, read_head, send_json
from swarmgate.pipeline.native_errors import send_native_error
from swarmgate.routing.fleet import Fleet, Pool
from swarmgate.types import ApiScope, ASGIScope, Authenticator, ModelType, Receive, Send

PREFIX = "/api/v1/models/"
NATIVE_TYPES: dict[ModelType, str] = {
    ModelType.CHAT: "text",
    ModelType.COMPLETION: "text",
    ModelType.EMBEDDING: "text",
    ModelType.IMAGE: "image",
    ModelType.AUDIO: "audio",
    ModelType.SPEECH: "audio",
    ModelType.TRANSCRIPTION: "audio",
}
STATUSES = ("available", "busy")
DEFAULT_LIMIT = 50
MAX_LIMIT = 200
_TEXT_PARAMETERS = {
    "max_tokens": {"type": "integer", "default": 512, "minimum": 1},
    "temperature": {"type": "number", "default": 0.7, "minimum": 0, "maximum": 2},
    "top_p": {"type": "number", "default": 0.9, "minimum": 0, "maximum": 1},
    "top_k": {"type": "integer", "default": None, "minimum": 1},
    "stop_sequences": {"type": "array", "default": None},
    "stream": {"type": "boolean", "default": False},
}
SUPPORTED_PARAMETERS: dict[str, dict[str, Any]] = {
    "text": _TEXT_PARAMETERS,
    "image": {
        "width": {"type": "integer", "default": 1024, "minimum": 64, "maximum": 4096},
        "height": {"type": "integer", "default": 1024, "minimum": 64, "maximum": 4096},
        "steps": {"type": "integer", "default": 50, "minimum": 1, "maximum": 500},
        "guidance_scale": {"type": "number", "default": 7.5, "minimum": 0, "maximum": 50},
        "negative_prompt": {"type": "string", "default": None},
        "seed": {"type": "integer", "default": None},
    },
    "audio": {
        "voice": {"type": "string", "default": "alloy"},
        "language": {"type": "string", "default": None},
        "speed": {"type": "number", "default": 1.0, "minimum": 0.25, "maximum": 4},
        "format": {"type": "string", "default": "mp3"},
    },
}
_EMBEDDING_PARAMETERS: dict[str, Any] = {}  # served on /v1/embeddings only


def status_of(pool: Pool) -> str:
    return "available" if pool.usable else "busy"


def model_info(pool: Pool) -> dict[str, Any]:
    kind = NATIVE_TYPES[pool.type]
    capabilities = list(pool.config.capabilities) or [str(pool.type)]
    parameters = (
        _EMBEDDING_PARAMETERS if pool.type is ModelType.EMBEDDING else SUPPORTED_PARAMETERS[kind]
    )
    return {
        "model_id": pool.model,
        "name": pool.model,
        "type": kind,
        "description": pool.config.description,
        "size": "unknown",  # the gateway fronts servers; it does not hold the weights
        "status": status_of(pool),
        "capabilities": capabilities,
        "supported_parameters": parameters,
        "aliases": list(pool.config.aliases),
        "deployments": len(pool.members),
    }


def _one(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


def _bounded(query: dict[str, list[str]], name: str, default: int, low: int, high: int) -> int:
    text = _one(query, name)
    if text is None:
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        raise BadRequest(f"'{name}' must be an integer from {low} to {high}", param=name)
    return int(text)


def _choice(query: dict[str, list[str]], name: str, allowed: tuple[str, ...]) -> str | None:
    value = _one(query, name)
    if value is not None and value not in allowed:
        raise BadRequest(f"'{name}' must be one of {', '.join(allowed)}", param=name)
    return value


class NativeModels:
    def __init__(self, fleet: Fleet, authenticator: Authenticator) -> None:
        self.fleet = fleet
        self.authenticator = authenticator

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        head = read_head(scope)
        try:
            head, principal = await authenticate(self.authenticator, scope)
            require(principal, ApiScope.MODELS_READ.value)
            headers: Headers = [(b"x-request-id", head.request_id.encode())]
            pools = [
                p for p in self.fleet.snapshot.pools.values() if principal.allows_model(p.model)
            ]
            path: str = scope["path"]
            if path.startswith(PREFIX):
                name = path.removeprefix(PREFIX)
                pool = self.fleet.snapshot.pools.get(name)
                if pool is None or not principal.allows_model(pool.model):
                    raise NotFound(f"the model {name!r} does not exist", param="model_id")
                await send_json(send, 200, model_info(pool), headers)
                return
            await send_json(send, 200, self._list(pools, scope), headers)
        except GatewayError as exc:
            await send_native_error(send, exc, head.request_id)

    @staticmethod
    def _list(pools: list[Pool], scope: ASGIScope) -> dict[str, Any]:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        kind = _choice(query, "type", ("text", "image", "audio"))
        status = _choice(query, "status", STATUSES)
        limit = _bounded(query, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        offset = _bounded(query, "offset", 0, 0, 2**31 - 1)
        found = [
            p
            for p in sorted(pools, key=lambda p: p.model)
            if (kind is None or NATIVE_TYPES[p.type] == kind)
            and (status is None or status_of(p) == status)
        ]
        page = found[offset : offset + limit]
        return {
            "models": [model_info(p) for p in page],
            "total": len(found),
            "limit": limit,
            "offset": offset,
        }
