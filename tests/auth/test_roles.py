from __future__ import annotations

import pytest

from swarmgate.auth.roles import (
    ALL_SCOPES,
    default_scopes,
    has_scope,
    parse_role,
    parse_scopes,
    require,
    scope_for_model_type,
)
from swarmgate.errors import Forbidden
from swarmgate.types import ApiScope, ModelType, Principal, Role


def principal(*scopes: str, via: str = "key") -> Principal:
    return Principal(subject="alice", role=Role.USER, scopes=frozenset(scopes), via=via)


def test_role_defaults_grow_with_the_role() -> None:
    assert default_scopes(Role.GUEST) == {"models:read", "inference:text"}
    assert default_scopes(Role.USER) == {
        "models:read",
        "inference:text",
        "inference:image",
        "inference:audio",
    }
    assert default_scopes(Role.POWER_USER) == default_scopes(Role.USER) | {"cluster:read"}
    assert default_scopes(Role.ADMIN) == {s.value for s in ApiScope}
    assert default_scopes(Role.SYSTEM) == ALL_SCOPES
    assert "admin" in default_scopes("admin") and "cluster:write" in default_scopes("admin")
    assert "admin" not in default_scopes(Role.POWER_USER)
    assert "cluster:write" not in default_scopes(Role.POWER_USER)


def test_parse_role_accepts_spellings_and_lists_valid_ones() -> None:
    assert parse_role("Power User") is Role.POWER_USER
    assert parse_role("power-user") is Role.POWER_USER
    assert parse_role(Role.GUEST) is Role.GUEST
    with pytest.raises(ValueError, match=r"unknown role 'root'.*guest, user, power_user"):
        parse_role("root")


@pytest.mark.parametrize(
    ("model_type", "scope"),
    [
        (ModelType.CHAT, "inference:text"),
        (ModelType.COMPLETION, "inference:text"),
        (ModelType.EMBEDDING, "inference:text"),
        (ModelType.IMAGE, "inference:image"),
        (ModelType.SPEECH, "inference:audio"),
        (ModelType.TRANSCRIPTION, "inference:audio"),
        (ModelType.AUDIO, "inference:audio"),
        ("image", "inference:image"),
    ],
)
def test_scope_for_model_type(model_type: ModelType, scope: str) -> None:
    assert scope_for_model_type(model_type) == scope


def test_every_model_type_has_a_scope() -> None:
    assert {scope_for_model_type(t) for t in ModelType} <= ALL_SCOPES


def test_require_passes_and_refuses_with_a_clear_message() -> None:
    require(principal("inference:text"), "inference:text")
    with pytest.raises(Forbidden, match=r"^this key lacks the 'inference:image' scope$") as info:
        require(principal("inference:text"), "inference:image")
    assert info.value.status == 403
    assert info.value.body()["error"]["type"] == "permission_error"
    with pytest.raises(Forbidden, match="this token lacks"):
        require(principal(via="jwt"), "models:read")
    with pytest.raises(Forbidden, match="anonymous callers lack the 'cluster:read'"):
        require(principal("models:read", via="anonymous"), "cluster:read")


@pytest.mark.parametrize("scope", sorted(ALL_SCOPES | {"a-future-scope"}))
def test_admin_scope_implies_every_scope(scope: str) -> None:
    require(principal("admin"), scope)
    assert has_scope(frozenset({"admin"}), scope)


def test_guest_defaults_cannot_generate_images() -> None:
    guest = Principal(subject="g", role=Role.GUEST, scopes=default_scopes(Role.GUEST))
    require(guest, scope_for_model_type(ModelType.CHAT))
    with pytest.raises(Forbidden):
        require(guest, scope_for_model_type(ModelType.IMAGE))


def test_parse_scopes_splits_and_validates() -> None:
    assert parse_scopes("models:read inference:text") == {"models:read", "inference:text"}
    assert parse_scopes("models:read,inference:text, admin") == {
        "models:read",
        "inference:text",
        "admin",
    }
    assert parse_scopes(["cluster:read", "cluster:read"]) == {"cluster:read"}
    assert parse_scopes([]) == frozenset()
    assert parse_scopes("") == frozenset()
    with pytest.raises(ValueError, match=r"unknown scope 'inference:video', 'root'; valid"):
        parse_scopes(["root", "inference:video", "models:read"])
    with pytest.raises(ValueError, match="valid scopes: admin, cluster:read, cluster:write"):
        parse_scopes("everything")
    with pytest.raises(ValueError, match="must be strings"):
        parse_scopes([1])  # type: ignore[list-item]
