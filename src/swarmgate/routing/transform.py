"""Request and response transformers (seed 003), compiled once from ``policy.Transform``.

A ``RequestEdit`` changes a request's body parameters (defaults set when absent, numbers
capped) and the headers that go upstream; it says whether the body changed, so that an
unchanged body is still forwarded as the client's own bytes. A ``ResponseEdit`` adds and
removes headers of the answer (the variant header of a split is one). Both are pure
functions of their inputs; nothing is built per request when no transform is configured.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from swarmgate.routing.policy import Transform

Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class RequestEdit:
    defaults: tuple[tuple[str, Any], ...] = ()
    caps: tuple[tuple[str, float], ...] = ()
    set_headers: tuple[tuple[str, str], ...] = ()
    remove_headers: frozenset[str] = frozenset()

    @classmethod
    def of(cls, t: Transform) -> RequestEdit | None:
        edit = cls(
            tuple(t.set_params.items()),
            tuple(t.cap_params.items()),
            tuple((k.lower(), v) for k, v in t.request_headers.items()),
            frozenset(h.lower() for h in t.remove_request_headers),
        )
        return edit if edit != cls() else None

    def apply(self, payload: dict[str, Any], headers: dict[str, str]) -> bool:
        """Edit ``payload`` and ``headers`` (the forwarded ones, lower-case names) in place;
        True when the payload changed."""
        changed = False
        for name, value in self.defaults:
            if payload.get(name) is None:
                payload[name] = value
                changed = True
        for name, cap in self.caps:
            value = payload.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool) and value > cap:
                payload[name] = int(cap) if isinstance(value, int) and cap == int(cap) else cap
                changed = True
        for name in self.remove_headers:
            headers.pop(name, None)
        for name, value in self.set_headers:
            headers[name] = value
        return changed


@dataclass(frozen=True, slots=True)
class ResponseEdit:
    add: tuple[tuple[bytes, bytes], ...] = ()
    remove: frozenset[bytes] = frozenset()

    @classmethod
    def of(cls, t: Transform) -> ResponseEdit | None:
        edit = cls(
            tuple(
                (k.lower().encode("latin-1"), v.encode("latin-1"))
                for k, v in t.response_headers.items()
            ),
            frozenset(h.lower().encode("latin-1") for h in t.remove_response_headers),
        )
        return edit if edit != cls() else None

    def headers(self, headers: Headers) -> Headers:
        """``headers`` with this edit's removed and added (a new list)."""
        remove = self.remove | {name for name, _ in self.add}
        kept = [h for h in headers if h[0] not in remove] if remove else headers
        return [*kept, *self.add]


def merged(edits: Sequence[ResponseEdit | None]) -> ResponseEdit | None:
    """One edit doing all of ``edits`` in order (later ones win on a header's value)."""
    present = [e for e in edits if e is not None]
    if len(present) <= 1:
        return present[0] if present else None
    add: dict[bytes, bytes] = {}
    remove: set[bytes] = set()
    for e in present:
        remove |= e.remove
        for name, value in e.add:
            remove.discard(name)
            add[name] = value
    return ResponseEdit(tuple(add.items()), frozenset(remove - set(add)))
