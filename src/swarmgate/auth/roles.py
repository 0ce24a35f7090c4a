"""Roles and scopes: who may do what.

Seed 002 names five roles (guest, user, power user, admin, system); seed 001 names the scopes
every route and model is guarded by. A key or token carries explicit scopes; a role only supplies
the *default* scopes when none are given. The ``admin`` scope implies every other scope, so an
admin key never fails a scope check (even for a scope added in a later release).

Everything here is a pure function over small frozen values: the authorize step on the hot path
calls ``require`` once per request, which is a frozenset membership test.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from swarmgate.errors import Forbidden
from swarmgate.types import ApiScope, ModelType, Principal, Role

ALL_SCOPES: frozenset[str] = frozenset(scope.value for scope in ApiScope)

_GUEST = frozenset({ApiScope.MODELS_READ.value, ApiScope.INFERENCE_TEXT.value})
_USER = _GUEST | {ApiScope.INFERENCE_IMAGE.value, ApiScope.INFERENCE_AUDIO.value}
_POWER_USER = _USER | {ApiScope.CLUSTER_READ.value}

DEFAULT_SCOPES: Mapping[Role, frozenset[str]] = MappingProxyType(
    {
        Role.GUEST: _GUEST,
        Role.USER: _USER,
        Role.POWER_USER: _POWER_USER,
        Role.ADMIN: ALL_SCOPES,
        Role.SYSTEM: ALL_SCOPES,
    }
)

_MODEL_TYPE_SCOPES: Mapping[ModelType, str] = MappingProxyType(
    {
        ModelType.CHAT: ApiScope.INFERENCE_TEXT.value,
        ModelType.COMPLETION: ApiScope.INFERENCE_TEXT.value,
        ModelType.EMBEDDING: ApiScope.INFERENCE_TEXT.value,
        ModelType.IMAGE: ApiScope.INFERENCE_IMAGE.value,
        ModelType.SPEECH: ApiScope.INFERENCE_AUDIO.value,
        ModelType.TRANSCRIPTION: ApiScope.INFERENCE_AUDIO.value,
        ModelType.AUDIO: ApiScope.INFERENCE_AUDIO.value,
    }
)

# JWT "scope" claims are space separated (RFC 8693); the CLI takes commas. Accept both.
_SEPARATORS = re.compile(r"[\s,]+")

_CALLER = {"key": "this key", "jwt": "this token", "anonymous": "anonymous callers"}


def parse_role(value: str | Role) -> Role:
    """``"power_user"``, ``"Power User"`` or ``"power-user"`` → ``Role.POWER_USER``."""
    if isinstance(value, Role):
        return value
    name = _SEPARATORS.sub("_", value.strip().lower()).replace("-", "_")
    try:
        return Role(name)
    except ValueError:
        valid = ", ".join(role.value for role in Role)
        raise ValueError(f"unknown role {value!r}; valid roles: {valid}") from None


def default_scopes(role: Role | str) -> frozenset[str]:
    """The scopes a key of ``role`` gets when it is created without explicit scopes."""
    return DEFAULT_SCOPES[parse_role(role)]


def scope_for_model_type(model_type: ModelType | str) -> str:
    """The scope needed to call a model of this type (chat, embedding, ... → inference:text)."""
    return _MODEL_TYPE_SCOPES[ModelType(model_type)]


def parse_scopes(values: str | Iterable[str]) -> frozenset[str]:
    """Validate scope names from the CLI, the admin API or a token claim.

    ``values`` is either one string (``"models:read inference:text"`` or comma separated) or an
    iterable of names. An unknown name raises ``ValueError`` listing the valid ones.
    """
    if isinstance(values, str):
        values = [values]
    names: set[str] = set()
    for value in values:
        if not isinstance(value, str):
            raise ValueError(f"scope names must be strings, got {value!r}")
        names.update(part for part in _SEPARATORS.split(value) if part)
    unknown = sorted(names - ALL_SCOPES)
    if unknown:
        valid = ", ".join(sorted(ALL_SCOPES))
        listed = ", ".join(repr(name) for name in unknown)
        raise ValueError(f"unknown scope {listed}; valid scopes: {valid}")
    return frozenset(names)


def has_scope(scopes: frozenset[str], scope: str) -> bool:
    return scope in scopes or ApiScope.ADMIN.value in scopes


def require(principal: Principal, scope: str) -> None:
    """Raise ``Forbidden`` unless ``principal`` holds ``scope`` (or ``admin``)."""
    if scope in principal.scopes or ApiScope.ADMIN.value in principal.scopes:
        return
    caller = _CALLER.get(principal.via, "this caller")
    verb = "lack" if principal.via == "anonymous" else "lacks"
    raise Forbidden(f"{caller} {verb} the '{scope!s}' scope")
