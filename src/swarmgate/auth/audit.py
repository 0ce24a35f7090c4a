"""The audit trail, written behind the hot path: record now, store in batches later.

``AuditLog.record`` is synchronous and never awaits (DESIGN.md: the hot path never waits on a
database write). It redacts secrets, clips fields to the column sizes and queues the record on a
``store.writebehind.WriteBehind``, which stores batches through an ``AuditSink`` (the SQL
``AuditStore``) every ``audit.flush_interval`` seconds or as soon as a batch is full, and spools
them to ``audit.spool_path`` (append-only JSON lines, replayed oldest first) while the store is
down. Its module docstring states the guarantees: nothing is dropped while the disk works,
delivery is at-least-once, workers sharing the spool coordinate with ``flock``.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Protocol

import orjson

from swarmgate.config import Audit
from swarmgate.store.audit import AuditRecord
from swarmgate.store.writebehind import Codec, WriteBehind
from swarmgate.types import Clock

REDACTED: Final = "[redacted]"

# "Bearer <anything>", OpenAI-style keys (ours are "sk-sg-..."), and JWT-shaped tokens (a JSON
# header always base64url-encodes to "eyJ").
_SECRET = re.compile(
    r"(?i:\b(bearer)\s+)[^\s,;\"']+"
    r"|(?<![A-Za-z0-9])sk-[A-Za-z0-9_\-]{8,}"
    r"|\beyJ[A-Za-z0-9_\-]*\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*"
)
_SECRET_NAMES: Final = frozenset(
    {
        "authorization",
        "proxy_authorization",
        "api_key",
        "apikey",
        "x_api_key",
        "admin_key",
        "secret",
        "client_secret",
        "password",
        "passwd",
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "private_key",
        "cookie",
        "set_cookie",
    }
)
_MAX_DEPTH: Final = 8

# The column sizes of store.schema.audit_log: a longer value would fail the whole batch on
# PostgreSQL, and a batch that can never be stored would block the spool forever.
FIELD_LIMITS: Final = {
    "action": 64,
    "actor": 200,
    "target": 200,
    "outcome": 32,
    "client_ip": 64,
    "request_id": 128,
}


class AuditSink(Protocol):
    """Where batches go: ``store.audit.AuditStore`` (raises ``StoreError`` when down)."""

    async def insert_many(self, records: Sequence[AuditRecord]) -> None: ...


def redact(text: str) -> str:
    """Replace anything that looks like a credential in ``text``."""

    def replace(match: re.Match[str]) -> str:
        scheme = match.group(1)
        return f"{scheme} {REDACTED}" if scheme else REDACTED

    return _SECRET.sub(replace, text.replace("\x00", ""))


def clean_details(value: Any, depth: int = 0) -> Any:
    """A JSON-safe, redacted copy: secrets out, values under secret names out, NaN as text."""
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if depth >= _MAX_DEPTH:
        return "[truncated]"
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            name = redact(str(key))
            secret = name.lower().replace("-", "_") in _SECRET_NAMES
            out[name] = REDACTED if secret else clean_details(item, depth + 1)
        return out
    if isinstance(value, list | tuple | set | frozenset):
        return [clean_details(item, depth + 1) for item in value]
    return redact(str(value))


def _field(name: str, value: str | None) -> str | None:
    if value is None:
        return None
    return redact(value)[: FIELD_LIMITS[name]]


def _encode(record: AuditRecord) -> bytes:
    return orjson.dumps(
        {
            "ts": record.ts,
            "action": record.action,
            "outcome": record.outcome,
            "actor": record.actor,
            "target": record.target,
            "client_ip": record.client_ip,
            "request_id": record.request_id,
            "details": record.details,
        }
    )


def _decode(line: bytes) -> AuditRecord:
    """Raise ValueError/TypeError/KeyError on a line that is not a record (e.g. torn)."""
    raw = orjson.loads(line)
    optional = ("actor", "target", "client_ip", "request_id")
    if not isinstance(raw.get("details"), dict) or not isinstance(raw["action"], str):
        raise ValueError("not an audit record")
    if not all(raw.get(name) is None or isinstance(raw[name], str) for name in optional):
        raise ValueError("not an audit record")
    return AuditRecord(
        ts=float(raw["ts"]),
        action=raw["action"],
        outcome=str(raw["outcome"]),
        actor=raw.get("actor"),
        target=raw.get("target"),
        client_ip=raw.get("client_ip"),
        request_id=raw.get("request_id"),
        details=raw["details"],
    )


CODEC: Final = Codec(_encode, _decode)


class AuditLog(WriteBehind[AuditRecord]):
    """The audit trail's write-behind queue, with ``record`` as its redacting front door."""

    def __init__(
        self,
        sink: AuditSink,
        config: Audit,
        clock: Clock = time.time,
        *,
        batch_size: int = 500,
        insert_timeout: float = 30.0,
    ) -> None:
        super().__init__(
            sink.insert_many,
            CODEC,
            Path(config.spool_path),
            what="audit",
            flush_interval=config.flush_interval,
            queue_size=config.queue_size,
            batch_size=batch_size,
            insert_timeout=insert_timeout,
        )
        self._clock = clock

    def record(
        self,
        action: str,
        *,
        actor: str | None = None,
        target: str | None = None,
        outcome: str = "ok",
        client_ip: str | None = None,
        request_id: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        """Queue one record. Never awaits; never raises for a full queue or a failing disk."""
        self.put(
            AuditRecord(
                ts=self._clock(),
                action=_field("action", action) or "",
                outcome=_field("outcome", outcome) or "",
                actor=_field("actor", actor),
                target=_field("target", target),
                client_ip=_field("client_ip", client_ip),
                request_id=_field("request_id", request_id),
                details=clean_details(details) if details else {},
            )
        )
