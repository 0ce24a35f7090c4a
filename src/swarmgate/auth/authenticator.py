"""Authentication on the hot path: who is calling, from which address, and may they.

The order is fixed: the client address (``X-Forwarded-For`` only from trusted proxies) → the IP
policy → the credentials. An API key (``sk-sg-...``) is hashed once (HMAC, ~1.4 µs) and looked up
in an in-process cache of verified principals; only a miss reaches the store. A cached principal
lives at most ``auth.cache_ttl`` seconds (and never past its key's expiry), and is dropped at once
when a revocation or rotation event arrives (Redis pub/sub across replicas). JWTs go to the
``JWTVerifier``. Every failure is counted, audited (off the hot path) and fed to the IP policy,
which blocks an address after too many failures.

While the store is unreachable (stale-while-unavailable), a principal whose TTL has run out is
served from the cache anyway, for up to ``auth.stale_max_age`` seconds after it was last
verified, never past its key's expiry, and only until a revocation event drops it; the store is
tried again once per ``cache_ttl``. A key that is not cached then cannot be checked: it gets a
503 with ``Retry-After``, never a 401 (a valid key must not be told it is invalid). That 503 is
audited like any failure but does not count towards the IP block: the caller did nothing wrong
that we know of, and the answer tells a guesser nothing.

With ``auth.enabled: false`` the IP policy still applies, and every caller it admits is the
system principal.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn

from swarmgate.auth.audit import AuditLog
from swarmgate.auth.ip import IPPolicy, Networks, Unknown, forwarded_client
from swarmgate.auth.keys import SECRET_PREFIX, KeyHasher, KeyService
from swarmgate.auth.roles import default_scopes
from swarmgate.config import Auth
from swarmgate.errors import ServiceUnavailable, StoreError, Unauthorized
from swarmgate.observability.metrics import Metrics
from swarmgate.store.keys import KeyRecord
from swarmgate.types import ApiScope, Clock, Principal, Role

SYSTEM = Principal(
    subject="anonymous",
    role=Role.SYSTEM,
    scopes=frozenset(s.value for s in ApiScope),
    via="anonymous",
)
GUEST = Principal(
    subject="anonymous", role=Role.GUEST, scopes=default_scopes(Role.GUEST), via="anonymous"
)
if TYPE_CHECKING:
    from swarmgate.auth.jwt import JWTVerifier

MAX_CACHED = 100_000
STORE_TIMEOUT = 5.0
RETRY_AFTER_SECONDS = 2  # what a caller whose key cannot be checked is told to wait


@dataclass(slots=True)
class _Verified:
    principal: Principal
    until: float  # served without a store query until then (the hot path reads only this)
    usable_until: float  # the key's expiry or the end of its secret's rotation grace
    verified_at: float


class KeyAuthenticator:
    def __init__(
        self,
        config: Auth,
        keys: KeyService,
        hasher: KeyHasher,
        ip_policy: IPPolicy,
        audit: AuditLog,
        metrics: Metrics,
        jwt: JWTVerifier | None = None,
        clock: Clock = time.time,
        *,
        on_block: Callable[[str], None] | None = None,
    ) -> None:
        self._config = config
        self._keys = keys
        self._hasher = hasher
        self._ip = ip_policy
        self._trusted = Networks(config.ip.trusted_proxies)
        self._audit = audit
        self._metrics = metrics
        self._jwt = jwt
        self._clock = clock
        self._on_block = on_block  # told of each automatic block (it stores it); must not await
        self._cache: dict[str, _Verified] = {}
        self._lookups: dict[str, asyncio.Future[tuple[KeyRecord, float] | None]] = {}
        self._hashes_of: dict[str, set[str]] = {}  # key id → cached hashes, for invalidation
        self.last_used: dict[str, float] = {}  # key id → time; flushed to the store off-path

    async def authenticate(
        self,
        authorization: str | None,
        peer: str | None,
        forwarded_for: str | None,
        request_id: str | None = None,
    ) -> Principal:
        unknown: Unknown = None
        if self._trusted:
            client, unknown = forwarded_client(peer, forwarded_for, self._trusted)
            # No usable client address from a trusted proxy: the policy sees the proxy (its
            # blocks apply), failures are audited as an unknown client's and block no one.
            ip = client if client is not None else (peer or "unknown")
        else:
            ip = peer or "unknown"
        self._ip.check(ip)
        if not self._config.enabled:
            return SYSTEM
        if authorization is None:
            if self._config.anonymous:
                return GUEST
            self._fail(
                ip,
                unknown,
                request_id,
                "missing",
                "Missing API key: send 'Authorization: Bearer <key>'",
            )
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            self._fail(
                ip,
                unknown,
                request_id,
                "malformed",
                "Malformed Authorization header: expected 'Bearer <key>'",
            )
        if token.startswith(SECRET_PREFIX):
            return await self._api_key(token, ip, unknown, request_id)
        if self._jwt is not None and token.count(".") == 2:
            try:
                return await self._jwt.verify(token)
            except Unauthorized as exc:
                self._fail(ip, unknown, request_id, "jwt", exc.message)
        self._fail(
            ip,
            unknown,
            request_id,
            "malformed",
            "Invalid API key: expected an sk-sg-... key or a JWT",
        )

    async def _api_key(
        self, token: str, ip: str, unknown: Unknown, request_id: str | None
    ) -> Principal:
        digest = self._hasher.hash(token)
        now = self._clock()
        cached = self._cache.get(digest)
        if cached is not None and cached.until > now:
            principal = cached.principal
        else:
            principal = await self._verify(digest, token, now, ip, unknown, request_id)
        if principal.key_id is not None:
            self.last_used[principal.key_id] = now
        return principal

    async def _verify(
        self,
        digest: str,
        token: str,
        now: float,
        ip: str,
        unknown: Unknown,
        request_id: str | None,
    ) -> Principal:
        try:
            found = await self._lookup(digest, token)
        except ServiceUnavailable as exc:
            # Read again after the await: a revocation event may have dropped the entry.
            stale = self._stale(self._cache.get(digest), self._clock())
            if stale is None:
                self._unverifiable(ip, unknown, request_id, exc)
            return stale
        if found is None:
            self._cache.pop(digest, None)
            self._fail(
                ip,
                unknown,
                request_id,
                "invalid_key",
                "Invalid API key: unknown, revoked or expired",
            )
        record, usable_until = found
        principal = record.principal()
        # Never trusted past the key's expiry or the end of a rotated secret's grace.
        until = min(now + self._config.cache_ttl, usable_until)
        self._remember(digest, record.id, _Verified(principal, until, usable_until, now))
        return principal

    def _stale(self, entry: _Verified | None, now: float) -> Principal | None:
        """The cached principal, if it may still be served while the store is unreachable;
        it is then served from the cache again for a TTL before the store is retried."""
        if entry is None:
            return None
        limit = min(entry.usable_until, entry.verified_at + self._config.stale_max_age)
        if now >= limit:
            return None
        entry.until = min(now + self._config.cache_ttl, limit)
        return entry.principal

    async def _lookup(self, digest: str, token: str) -> tuple[KeyRecord, float] | None:
        """One store query per key at a time, however many requests miss the cache together
        (a cold start, or every ``cache_ttl``), and never longer than ``STORE_TIMEOUT``."""
        pending = self._lookups.get(digest)
        if pending is None:
            pending = asyncio.ensure_future(self._query(token))
            self._lookups[digest] = pending
            pending.add_done_callback(lambda _: self._lookups.pop(digest, None))
        return await asyncio.shield(pending)

    async def _query(self, token: str) -> tuple[KeyRecord, float] | None:
        try:
            async with asyncio.timeout(STORE_TIMEOUT):
                return await self._keys.check(token)
        except (StoreError, TimeoutError) as exc:
            raise ServiceUnavailable(
                "authentication is unavailable: the key store cannot be reached"
            ) from exc

    def _remember(self, digest: str, key_id: str, verified: _Verified) -> None:
        if len(self._cache) >= MAX_CACHED:
            self._cache.clear()
            self._hashes_of.clear()
        self._cache[digest] = verified
        self._hashes_of.setdefault(key_id, set()).add(digest)

    def invalidate(self, key_id: str) -> None:
        """Forget the cached principal of a key (revoked, rotated, expired): an event listener."""
        for digest in self._hashes_of.pop(key_id, ()):
            self._cache.pop(digest, None)

    def _unverifiable(
        self, ip: str, unknown: Unknown, request_id: str | None, exc: ServiceUnavailable
    ) -> NoReturn:
        self._metrics.auth_failure("store_unavailable")
        self._audit_failure(ip, unknown, request_id, "store_unavailable", "unavailable")
        raise ServiceUnavailable(
            exc.message, headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
        ) from exc

    def _fail(
        self, ip: str, unknown: Unknown, request_id: str | None, reason: str, message: str
    ) -> NoReturn:
        self._metrics.auth_failure(reason)
        self._audit_failure(ip, unknown, request_id, reason, "denied")
        # Only a known client is counted: with none, the address is a trusted proxy's.
        if unknown is None and self._ip.record_failure(ip):
            self._audit.record(
                "ip.autoblock",
                target=ip,
                outcome="blocked",
                client_ip=ip,
                request_id=request_id,
                details={
                    "failures": self._config.ip.max_failures,
                    "window_seconds": self._config.ip.failure_window,
                    "block_seconds": self._config.ip.block_seconds,
                },
            )
            if self._on_block is not None:
                self._on_block(ip)
        raise Unauthorized(message)

    def _audit_failure(
        self, ip: str, unknown: Unknown, request_id: str | None, reason: str, outcome: str
    ) -> None:
        details = {"reason": reason}
        if unknown is not None:
            # A trusted proxy (``ip``) sent no usable X-Forwarded-For: the client is unknown.
            details.update(forwarded_for=unknown, proxy=ip)
        self._audit.record(
            "auth.failure",
            outcome=outcome,
            client_ip=ip if unknown is None else "unknown",
            request_id=request_id,
            details=details,
        )
