"""The bottom layer: ASGI aliases, small frozen value types and Protocols.

Imports nothing from the package, so every other module may import it.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Protocol

ASGIScope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[ASGIScope, Receive, Send], Awaitable[None]]

JSON = dict[str, Any]


class ModelType(enum.StrEnum):
    CHAT = "chat"
    COMPLETION = "completion"
    EMBEDDING = "embedding"
    IMAGE = "image"
    AUDIO = "audio"


class Role(enum.StrEnum):
    """Seed 002's roles; each maps to a default set of scopes (see auth.roles)."""

    GUEST = "guest"
    USER = "user"
    POWER_USER = "power_user"
    ADMIN = "admin"
    SYSTEM = "system"


class ApiScope(enum.StrEnum):
    """Seed 001's scopes, enforced on every route and every model."""

    MODELS_READ = "models:read"
    INFERENCE_TEXT = "inference:text"
    INFERENCE_IMAGE = "inference:image"
    INFERENCE_AUDIO = "inference:audio"
    CLUSTER_READ = "cluster:read"
    CLUSTER_WRITE = "cluster:write"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, once authenticated. Cached in process; never holds a secret."""

    subject: str
    role: Role
    scopes: frozenset[str]
    tier: str = "default"
    models: frozenset[str] | None = None  # None: every model
    key_id: str | None = None
    via: str = "key"  # key | jwt | anonymous
    expires_at: float | None = None

    def allows_model(self, model: str) -> bool:
        return self.models is None or model in self.models


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Clock(Protocol):
    def __call__(self) -> float: ...


class Authenticator(Protocol):
    """Turns a request's credentials into a ``Principal`` or raises Unauthorized/IPBlocked."""

    async def authenticate(
        self,
        authorization: str | None,
        peer: str | None,
        forwarded_for: str | None,
        request_id: str | None = None,
    ) -> Principal: ...
