"""Per-environment profiles: ``profiles: {development: ..., staging: ..., production: ...}`` in a
configuration file, one of them laid over the rest of the file by ``--profile`` or
``SWARMGATE_PROFILE``.

A profile is written in swarmgate's own shape (``limits: {enabled: false}``), merged key by
key over the base: mappings merge, anything else (a list, a number) replaces. Seed 003's
environment sections are read too, as that seed writes them:

- ``rate_limiting.enabled`` → ``limits.enabled``; ``rate_limiting.requests_per_second`` →
  ``limits.global.rps`` (the whole gateway's rate);
- ``circuit_breaker.failure_threshold`` and ``circuit_breaker.timeout`` → every model's
  ``circuit_breaker.threshold`` and ``open_seconds`` (a deployment's own circuit keeps its own);
- ``logging.level`` is swarmgate's ``logging.level`` when that section exists;
- ``authentication``'s fields have no setting to map to; each is named in ``notes``.

This module imports nothing of ours: the loader validates what comes out of it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

SECTION = "profiles"
# Seed 003's authentication options, and why swarmgate has no setting for them.
AUTHENTICATION_NOTES = {
    "strict_validation": "keys and tokens are always fully verified",
    "token_refresh": "clients refresh their own JWTs; the gateway verifies each one it gets",
    "bypass_local": (
        "no local bypass; to let callers without a key in (as guests) set auth.anonymous: true"
    ),
}


@dataclass
class Overlay:
    """A profile read into swarmgate's shape, and what of it has no equivalent."""

    config: dict[str, Any] = field(default_factory=dict)
    circuit_breaker: dict[str, Any] = field(default_factory=dict)  # for every model
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def names(raw: dict[str, Any]) -> list[str]:
    """The profiles a document defines (none when the section is missing or malformed)."""
    profiles = raw.get(SECTION)
    return [str(name) for name in profiles] if isinstance(profiles, dict) else []


def merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """``overlay`` over ``base``: mappings merge key by key, any other value replaces."""
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _mapping(value: Any, where: str, out: Overlay) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        out.problems.append(f"{where}: expected a mapping")
        return {}
    return value


def read(body: Any, where: str, *, has_logging: bool) -> Overlay:
    """One profile's body → an overlay in swarmgate's shape."""
    out = Overlay()
    for key, value in _mapping(body, where, out).items():
        if key == "rate_limiting":
            _rate_limiting(_mapping(value, f"{where}.{key}", out), f"{where}.{key}", out)
        elif key == "circuit_breaker":
            _circuit_breaker(_mapping(value, f"{where}.{key}", out), f"{where}.{key}", out)
        elif key == "authentication":
            for name in _mapping(value, f"{where}.{key}", out):
                why = AUTHENTICATION_NOTES.get(name, "not a setting swarmgate has")
                out.notes.append(f"{where}.{key}.{name}: ignored: {why}")
        elif key == "logging" and not has_logging:
            out.notes.append(f"{where}.{key}: ignored: this version has no logging settings")
        else:
            out.config[key] = value
    return out


def _rate_limiting(value: dict[str, Any], where: str, out: Overlay) -> None:
    for name, setting in value.items():
        if name == "enabled":
            out.config = merge(out.config, {"limits": {"enabled": setting}})
        elif name == "requests_per_second":
            out.config = merge(out.config, {"limits": {"global": {"rps": setting}}})
            out.notes.append(f"{where}.{name} → limits.global.rps (the whole gateway)")
        else:
            out.problems.append(f"{where}.{name}: unknown field (enabled, requests_per_second)")


CIRCUIT_FIELDS = {"failure_threshold": "threshold", "timeout": "open_seconds"}


def _circuit_breaker(value: dict[str, Any], where: str, out: Overlay) -> None:
    for name, setting in value.items():
        target = CIRCUIT_FIELDS.get(name, name)
        out.circuit_breaker[target] = setting
        if name in CIRCUIT_FIELDS:
            out.notes.append(f"{where}.{name} → models.*.circuit_breaker.{target}")


def apply(raw: dict[str, Any], name: str | None, *, has_logging: bool) -> Overlay:
    """The document without its ``profiles`` section, with profile ``name`` (if any) laid over
    it, in ``Overlay.config``. An unknown profile is a problem, not a silent base config."""
    profiles = raw.get(SECTION)
    # A copy: the circuit breakers below are set inside the models' own mappings.
    base = copy.deepcopy({k: v for k, v in raw.items() if k != SECTION})
    out = Overlay(config=base)
    if profiles is not None and not isinstance(profiles, dict):
        out.problems.append(f"{SECTION}: expected a mapping of profile names")
        return out
    if name is None:
        return out
    if not profiles or name not in profiles:
        known = ", ".join(str(n) for n in profiles or ()) or "none defined"
        out.problems.append(f"profile {name!r}: not in {SECTION} ({known})")
        return out
    overlay = read(profiles[name], f"{SECTION}.{name}", has_logging=has_logging)
    out.notes, out.problems = overlay.notes, overlay.problems
    out.config = merge(base, overlay.config)
    if overlay.circuit_breaker:
        models = out.config.get("models")
        for model in models.values() if isinstance(models, dict) else ():
            if isinstance(model, dict):
                current = model.get("circuit_breaker")
                current = current if isinstance(current, dict) else {}
                model["circuit_breaker"] = {**current, **overlay.circuit_breaker}
    return out
