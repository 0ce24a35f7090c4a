"""API keys: secrets, their HMAC hashes, and the policy of creating, rotating and checking them.

A key's secret (``sk-sg-`` + 256 random bits) is shown once, at creation or rotation, and never
stored: the store keeps ``HMAC-SHA256(server secret, key)`` and a short visible prefix. The
server secret makes a stolen database useless for guessing keys offline; every replica must
share it (``auth.secret``), or each would hash differently.

Lookup hashes the presented key and finds the row by that hash. Timing reveals nothing of the
key: the only data-dependent comparison the database makes is on an HMAC output the caller
cannot choose. The one explicit comparison uses ``hmac.compare_digest``.

``KeyService`` holds the rules (revoked, expired, grace periods after rotation, bootstrap of the
first admin key); ``store.keys.KeyStore`` only reads and writes rows.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import hmac
import math
import os
import re
import secrets
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Final, Literal

from swarmgate.auth.roles import ALL_SCOPES, default_scopes, parse_role, parse_scopes
from swarmgate.config import MAX_DURATION
from swarmgate.errors import BadRequest, ConfigError, NotFound, StoreError
from swarmgate.store.keys import KeyRecord, KeyStore
from swarmgate.types import Clock, Role

SECRET_PREFIX = "sk-sg-"
VISIBLE_PREFIX_LEN = 12  # "sk-sg-" + 6 characters: enough to tell keys apart in a listing
MIN_ADMIN_KEY_BODY = 32  # characters after the prefix in SWARMGATE_ADMIN_KEY
MAX_SECRET_LEN = 256  # longer bearer tokens are not ours; do not even hash them
MIN_SERVER_SECRET = 32
BOOTSTRAP_NAME = "bootstrap-admin"
LAST_TIME = 253402300799.0  # 9999-12-31T23:59:59Z
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # Unicode's Cc: C0, DEL and C1


class Expiry(enum.Enum):
    """``create(expires_at=NEVER)``: a key that never expires, whatever
    ``auth.default_key_expiry`` says (``expires_at=None`` means "the default")."""

    NEVER = "never"


NEVER: Final = Expiry.NEVER
# What a new key's expiry may be given as: epoch seconds, NEVER, or None for the default.
ExpiresAt = float | Literal[Expiry.NEVER] | None


def generate_secret() -> str:
    """A new key: ``sk-sg-`` and 43 URL-safe characters (256 random bits)."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def new_key_id() -> str:
    return "key_" + secrets.token_hex(8)


class KeyHasher:
    """HMAC-SHA256 of keys under the server secret."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < MIN_SERVER_SECRET:
            raise ConfigError(
                [f"auth.secret: the server secret must be at least {MIN_SERVER_SECRET} bytes"]
            )
        self._secret = secret

    def hash(self, key: str) -> str:
        return hmac.new(self._secret, key.encode(), hashlib.sha256).hexdigest()

    @staticmethod
    def prefix(key: str) -> str:
        return key[:VISIBLE_PREFIX_LEN]

    def matches(self, key: str, digest: str) -> bool:
        return hmac.compare_digest(self.hash(key), digest)


def check_admin_key(value: str) -> None:
    """``SWARMGATE_ADMIN_KEY`` must look like one of our keys and be long enough to be safe."""
    if not value.startswith(SECRET_PREFIX) or len(value) - len(SECRET_PREFIX) < MIN_ADMIN_KEY_BODY:
        raise ConfigError(
            [
                f"auth.admin_key: must start with {SECRET_PREFIX!r} followed by at least "
                f"{MIN_ADMIN_KEY_BODY} characters (e.g. sk-sg-$(openssl rand -hex 32))"
            ]
        )
    if len(value) > MAX_SECRET_LEN or not value.isascii() or not value.isprintable():
        raise ConfigError([f"auth.admin_key: at most {MAX_SECRET_LEN} printable ASCII characters"])


def load_or_create_server_secret(configured: str | None, path: Path) -> bytes:
    """The HMAC key for API keys: ``configured`` if given, else the contents of ``path``,
    created (32 random bytes, mode 0600) if missing. Several processes may race to create it:
    the file appears atomically and every one of them ends up with the same secret."""
    if configured is not None:
        if len(configured) < MIN_SERVER_SECRET:
            raise ConfigError(
                [f"auth.secret: must be at least {MIN_SERVER_SECRET} characters long"]
            )
        return configured.encode()
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ConfigError([f"auth.secret: cannot read {path}: {exc.strerror or exc}"]) from exc
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(32))
                f.flush()
                os.fsync(f.fileno())
            # link() fails if the file exists, so a concurrent creator's secret wins intact.
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return _read_secret(path)
    except OSError as exc:
        raise ConfigError([f"auth.secret: cannot create {path}: {exc.strerror or exc}"]) from exc


def _read_secret(path: Path) -> bytes:
    data = path.read_bytes()
    if len(data) < MIN_SERVER_SECRET:
        raise ConfigError([f"auth.secret: {path} holds fewer than {MIN_SERVER_SECRET} bytes"])
    return data


def _text(field: str, value: str, max_len: int) -> str:
    value = value.strip()
    if not value or len(value) > max_len:
        raise BadRequest(f"{field} must be 1 to {max_len} characters", param=field)
    # Names end up in terminals, logs and CSV exports: no NUL, escapes or line breaks.
    if CONTROL.search(value):
        raise BadRequest(f"{field} must not contain control characters", param=field)
    return value


def _expiry(field: str, at: float, now: float) -> float:
    """A new key's expiry: a finite epoch time no further than ``MAX_DURATION`` from now."""
    if not math.isfinite(at) or at > now + MAX_DURATION:
        raise BadRequest(f"{field} must be a time within 10 years from now", param=field)
    return at


def _time(field: str, at: float) -> float:
    """An epoch time a calendar can show (a later expiry set on an existing key)."""
    if not 0 <= at <= LAST_TIME:
        raise BadRequest(f"{field} must be an epoch time before the year 10000", param=field)
    return at


def _role(value: Role | str) -> Role:
    try:
        return parse_role(value)
    except ValueError as exc:
        raise BadRequest(str(exc), param="role") from None


def _scopes(role: Role, values: Iterable[str] | None) -> frozenset[str]:
    if values is None:
        return default_scopes(role)
    try:
        return parse_scopes(values)
    except ValueError as exc:
        raise BadRequest(str(exc), param="scopes") from None


class KeyService:
    """Create, rotate, revoke, expire and check API keys."""

    def __init__(
        self,
        store: KeyStore,
        hasher: KeyHasher,
        clock: Clock = time.time,
        *,
        default_expiry: float | None = None,
    ) -> None:
        self._store = store
        self._hasher = hasher
        self._clock = clock
        self.default_expiry = default_expiry  # auth.default_key_expiry, seconds

    async def create(
        self,
        name: str,
        owner: str,
        role: Role | str,
        scopes: Iterable[str] | None = None,
        tier: str = "default",
        models: Iterable[str] | None = None,
        expires_at: ExpiresAt = None,
    ) -> tuple[KeyRecord, str]:
        """A new key and its secret. The secret is returned here once and never again.
        Without ``scopes`` the key gets its role's default scopes (``auth.roles``). Without
        ``expires_at`` it expires after ``default_expiry`` (if set); ``NEVER``: it does not."""
        at = expires_at
        if at is None and self.default_expiry is not None:
            at = self._clock() + self.default_expiry
        elif at is NEVER:
            at = None
        record = self._new_record(name, owner, role, scopes, tier, models, at)
        secret = generate_secret()
        await self._store.create(record, self._hasher.hash(secret), self._hasher.prefix(secret))
        return record, secret

    def _new_record(
        self,
        name: str,
        owner: str,
        role: Role | str,
        scopes: Iterable[str] | None,
        tier: str,
        models: Iterable[str] | None,
        expires_at: float | None,
    ) -> KeyRecord:
        now = self._clock()
        parsed_role = _role(role)
        if expires_at is not None and _expiry("expires_at", expires_at, now) <= now:
            raise BadRequest("expires_at is in the past", param="expires_at")
        return KeyRecord(
            id=new_key_id(),
            name=_text("name", name, 200),
            owner=_text("owner", owner, 200),
            role=parsed_role,
            scopes=_scopes(parsed_role, scopes),
            tier=_text("tier", tier, 64),
            models=None if models is None else frozenset(_text("models", m, 200) for m in models),
            created_at=now,
            expires_at=expires_at,
        )

    async def _existing(self, key_id: str) -> KeyRecord:
        record = await self._store.get(key_id)
        if record is None:
            raise NotFound(f"no API key {key_id!r}", param="key_id")
        return record

    async def rotate(self, key_id: str, grace_seconds: float) -> tuple[KeyRecord, str]:
        """A new secret for the key; its older secrets keep working for ``grace_seconds``."""
        if not 0 <= grace_seconds <= MAX_DURATION:  # NaN fails too
            raise BadRequest("grace_seconds must be between 0 and 10 years", param="grace_seconds")
        record = await self._existing(key_id)
        if record.revoked_at is not None:
            raise BadRequest(f"API key {key_id!r} is revoked; create a new one", param="key_id")
        now = self._clock()
        secret = generate_secret()
        await self._store.rotate_secret(
            key_id,
            self._hasher.hash(secret),
            self._hasher.prefix(secret),
            now=now,
            old_valid_until=now + grace_seconds,
        )
        return record, secret

    async def revoke(self, key_id: str) -> KeyRecord:
        """Revoke the key at once, every secret of it. Revoking twice keeps the first time."""
        if not await self._store.revoke(key_id, self._clock()):
            raise NotFound(f"no API key {key_id!r}", param="key_id")
        return await self._existing(key_id)

    async def expire(self, key_id: str, at: float | None = None) -> KeyRecord:
        """Make the key expire at ``at`` (default: now)."""
        now = self._clock()
        when = now if at is None else _time("at", at)
        if not await self._store.set_expiry(key_id, when):
            raise NotFound(f"no API key {key_id!r}", param="key_id")
        return await self._existing(key_id)

    async def lookup(self, secret: str) -> KeyRecord | None:
        """The key this secret belongs to, if it may be used now; else None (unknown, revoked,
        expired, or an old secret past its grace period)."""
        found = await self.check(secret)
        return None if found is None else found[0]

    async def check(self, secret: str) -> tuple[KeyRecord, float] | None:
        """Like ``lookup``, with the time until which this secret stays usable (its key's
        expiry or the end of its rotation grace; ``inf`` if neither), for caches."""
        if not secret.startswith(SECRET_PREFIX) or len(secret) > MAX_SECRET_LEN:
            return None
        digest = self._hasher.hash(secret)
        found = await self._store.find_by_hash(digest)
        if found is None or not hmac.compare_digest(found.hash, digest):
            return None
        now = self._clock()
        if not found.key.is_active(now):
            return None
        if found.valid_until is not None and now >= found.valid_until:
            return None
        until = min(
            found.key.expires_at if found.key.expires_at is not None else math.inf,
            found.valid_until if found.valid_until is not None else math.inf,
        )
        return found.key, until

    async def bootstrap_admin(self, admin_key: str | None) -> str | None:
        """Make sure someone can administer this gateway. Returns the secret of the admin key
        it created, or None if it created nothing.

        - Empty store, no ``admin_key``: create an admin key with a generated secret (the
          caller prints it once: it cannot be shown again).
        - ``admin_key`` given (``SWARMGATE_ADMIN_KEY``) and not yet in the store, empty or not:
          add it as an admin key. This is the recovery path: an operator who lost every admin
          key sets the variable and restarts. A key that is already stored is left as it is, so
          revoking it stays effective; to recover after that, set a new value.
        - Otherwise nothing happens.

        Two replicas bootstrapping an empty store at the same moment without ``admin_key`` may
        each create a key; both are valid admin keys.
        """
        if admin_key is None:
            if await self._store.count() > 0:
                return None
            return await self._create_admin(None)
        check_admin_key(admin_key)
        if await self._store.find_by_hash(self._hasher.hash(admin_key)) is not None:
            return None
        try:
            await self._create_admin(admin_key)
        except StoreError:
            # Another replica inserted the same key between our check and our insert.
            if await self._store.find_by_hash(self._hasher.hash(admin_key)) is None:
                raise
            return None
        return admin_key

    async def _create_admin(self, secret: str | None) -> str:
        record = self._new_record(
            BOOTSTRAP_NAME, "admin", Role.ADMIN, ALL_SCOPES, "default", None, None
        )
        secret = generate_secret() if secret is None else secret
        await self._store.create(record, self._hasher.hash(secret), self._hasher.prefix(secret))
        return secret
