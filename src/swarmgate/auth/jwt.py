"""Bearer JWTs: HS256 with our own secret, or RS256/ES256 from an OIDC issuer's JWKS.

PyJWT checks signatures; everything around it is ours because the gateway needs what
``PyJWKClient`` does not give: an async fetch (it uses urllib, which would block the event loop),
refetches on an unknown ``kid`` that are rate-limited (so random kids cannot make us hammer the
issuer), stale keys while the issuer is briefly unreachable, and claim checks against an
injected clock.

Rules, each one a defence:
- a token's algorithm must be in ``auth.jwt.algorithms``; HS256 is verified only with
  ``hs256_secret`` and RS256/ES256 only with a JWKS key whose own algorithm matches, so neither
  ``alg: none`` nor an HS256 token keyed with the issuer's public key can pass;
- tokens over 8 KB are refused before anything is decoded; ``exp`` is required; ``nbf`` and
  ``iat`` must not be in the future beyond ``leeway``; ``iss`` and ``aud`` must match when set
  (with OIDC discovery and no ``issuer`` configured, the discovered issuer is required);
- role ``system`` is honoured only from HS256 tokens signed with our own secret, never from an
  identity provider: an OIDC token claiming it gets the default role.
Error messages name the problem ("token expired", "invalid audience") and never the token.

Verified principals are cached by the token's SHA-256 until ``min(exp, now + 60 s)`` in a bounded
LRU, so a cache hit costs one hash and one dict lookup.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import jwt
import orjson
from jwt.types import SigOptions

from swarmgate.auth.roles import ALL_SCOPES, default_scopes, parse_role
from swarmgate.config import JWT, JWTClaims
from swarmgate.errors import ConfigError, ServiceUnavailable, Unauthorized
from swarmgate.types import Principal, Role

log = logging.getLogger(__name__)

MAX_TOKEN_BYTES = 8192
MAX_DOCUMENT_BYTES = 1024 * 1024  # a discovery document or a JWKS
MIN_HS256_SECRET_BYTES = 32  # RFC 7518 §3.2: at least the size of the hash output
PRINCIPAL_CACHE_SIZE = 10_000
PRINCIPAL_CACHE_SECONDS = 60.0
REFETCH_INTERVAL = 30.0  # at most one JWKS fetch per this many seconds, whatever the reason
MAX_STALE_SECONDS = 3600.0  # how long past expiry cached keys serve while the issuer is down
FETCH_TIMEOUT = aiohttp.ClientTimeout(total=5.0, sock_connect=3.0)

_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_ALG_NAME = re.compile(r"[A-Za-z0-9]{1,16}")
_SPLIT = re.compile(r"[\s,]+")
_ASYMMETRIC = frozenset({"RS256", "ES256"})
_SIG_OPTIONS: SigOptions = {"verify_signature": True, "enforce_minimum_key_length": True}


class _FetchFailed(Exception):
    """The issuer could not be reached or answered nonsense; the reason is in the message."""


class JWKSCache:
    """An issuer's signing keys by ``kid``, fetched with aiohttp and cached.

    Keys are refreshed after ``cache_seconds``, and at once when a token names an unknown
    ``kid`` (key rotation); either way at most one fetch per ``refetch_interval``. If a fetch
    fails the previous keys keep serving for up to ``max_stale`` seconds past their expiry.
    """

    def __init__(
        self,
        *,
        jwks_url: str | None = None,
        discovery_url: str | None = None,
        cache_seconds: float = 300.0,
        refetch_interval: float = REFETCH_INTERVAL,
        max_stale: float = MAX_STALE_SECONDS,
        session_factory: Callable[[], aiohttp.ClientSession] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if (jwks_url is None) == (discovery_url is None):
            raise ValueError("give exactly one of jwks_url and discovery_url")
        self._jwks_url = jwks_url
        self._discovery_url = discovery_url
        self._cache_seconds = cache_seconds
        self._refetch_interval = refetch_interval
        self._max_stale = max_stale
        self._session_factory = session_factory
        self._session: aiohttp.ClientSession | None = None
        self._clock = clock
        self._lock = asyncio.Lock()
        self._keys: dict[str, jwt.PyJWK] = {}
        self._unnamed: tuple[jwt.PyJWK, ...] = ()
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._last_error: str | None = None
        self.issuer: str | None = None  # from the discovery document, once fetched

    async def get(self, kid: str | None) -> jwt.PyJWK | None:
        """The key for ``kid`` (a lone key when ``kid`` is None), or None if the issuer has none.

        Raises ``ServiceUnavailable`` when no keys are known and the issuer cannot be reached.
        """
        now = self._clock()
        if self._fetched_at is None or now - self._fetched_at >= self._cache_seconds:
            await self._refresh()
        key = self._lookup(kid)
        if key is None:
            await self._refresh()
            key = self._lookup(kid)
        if key is None and not self._keys and not self._unnamed and self._last_error is not None:
            raise ServiceUnavailable(f"identity provider unavailable: {self._last_error}")
        return key

    def _lookup(self, kid: str | None) -> jwt.PyJWK | None:
        if self._fetched_at is not None and (
            self._clock() - self._fetched_at > self._cache_seconds + self._max_stale
        ):
            self._keys, self._unnamed = {}, ()
        if kid is not None:
            return self._keys.get(kid)
        every = (*self._keys.values(), *self._unnamed)
        return every[0] if len(every) == 1 else None

    async def _refresh(self) -> None:
        # Concurrent callers queue on the lock; whoever comes second finds the attempt just
        # made and returns, so one burst of unknown kids costs the issuer one request.
        async with self._lock:
            now = self._clock()
            if self._attempted_at is not None and now - self._attempted_at < self._refetch_interval:
                return
            self._attempted_at = now
            try:
                keys = await self._fetch_keys()
            except _FetchFailed as exc:
                self._last_error = str(exc)
                log.warning("JWKS refresh failed, serving cached keys: %s", exc)
                return
            self._keys = {key.key_id: key for key in keys if key.key_id is not None}
            self._unnamed = tuple(key for key in keys if key.key_id is None)
            self._fetched_at = now
            self._last_error = None

    async def _fetch_keys(self) -> list[jwt.PyJWK]:
        url = self._jwks_url
        if url is None:
            assert self._discovery_url is not None
            document = await self._fetch_json(self._discovery_url)
            url = document.get("jwks_uri")
            if not isinstance(url, str) or not url.startswith(("https://", "http://")):
                raise _FetchFailed("the discovery document has no valid jwks_uri")
            issuer = document.get("issuer")
            self.issuer = issuer if isinstance(issuer, str) and issuer else None
        document = await self._fetch_json(url)
        raw_keys = document.get("keys")
        if not isinstance(raw_keys, list):
            raise _FetchFailed(f"{url}: not a JWKS (no 'keys' list)")
        keys = []
        for raw in raw_keys:
            if not isinstance(raw, dict) or raw.get("use", "sig") != "sig":
                continue
            try:
                keys.append(jwt.PyJWK(raw))
            except jwt.PyJWTError as exc:  # an algorithm we do not use, or a broken key
                log.debug("skipping JWKS key %r: %s", raw.get("kid"), exc)
        if not keys:
            raise _FetchFailed(f"{url}: no usable signing keys")
        return keys

    async def _fetch_json(self, url: str) -> dict[str, Any]:
        if self._session is None:
            factory = self._session_factory
            self._session = factory() if factory else aiohttp.ClientSession(timeout=FETCH_TIMEOUT)
        try:
            async with self._session.get(url, timeout=FETCH_TIMEOUT) as response:
                if response.status != 200:
                    raise _FetchFailed(f"{url} answered HTTP {response.status}")
                body = await response.content.read(MAX_DOCUMENT_BYTES + 1)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _FetchFailed(f"{url}: {type(exc).__name__}: {exc}") from exc
        if len(body) > MAX_DOCUMENT_BYTES:
            raise _FetchFailed(f"{url}: document larger than {MAX_DOCUMENT_BYTES} bytes")
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise _FetchFailed(f"{url}: not JSON") from exc
        if not isinstance(document, dict):
            raise _FetchFailed(f"{url}: not a JSON object")
        return document

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def check_claims(
    claims: Mapping[str, Any],
    *,
    now: float,
    leeway: float,
    issuer: str | None,
    audience: str | None,
) -> float:
    """Check the registered claims; return ``exp``. Pure, so the clock is an argument."""
    exp = claims.get("exp")
    if not _is_number(exp):
        raise Unauthorized("token has no expiry (exp)" if exp is None else "invalid exp claim")
    assert isinstance(exp, int | float)
    if exp <= now - leeway:
        raise Unauthorized("token expired")
    nbf = claims.get("nbf")
    if nbf is not None and (not _is_number(nbf) or nbf > now + leeway):
        raise Unauthorized("token not yet valid (nbf)")
    iat = claims.get("iat")
    if iat is not None and (not _is_number(iat) or iat > now + leeway):
        raise Unauthorized("token issued in the future (iat)")
    if issuer is not None and claims.get("iss") != issuer:
        raise Unauthorized("invalid issuer")
    if audience is not None:
        aud = claims.get("aud")
        if not (aud == audience or (isinstance(aud, list) and audience in aud)):
            raise Unauthorized("invalid audience")
    return float(exp)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _names(value: object) -> list[str] | None:
    """A claim holding names: a space- or comma-separated string or a list of strings."""
    if isinstance(value, str):
        return [part for part in _SPLIT.split(value) if part]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    return None


def principal_from_claims(
    claims: Mapping[str, Any],
    mapping: JWTClaims,
    *,
    default_role: Role,
    allow_system: bool,
    expires_at: float,
) -> Principal:
    """Map verified claims to a Principal; unknown roles and scope names fall back to defaults.

    Scopes are the token's scopes that swarmgate knows (OIDC tokens also carry ``openid``,
    ``email`` ...); when it names none of ours, the role's default scopes apply.
    """
    subject = claims.get(mapping.subject)
    if not isinstance(subject, str) or not subject or len(subject) > 256:
        raise Unauthorized(f"token has no valid subject ({mapping.subject})")
    role = default_role
    claimed = claims.get(mapping.role)
    if isinstance(claimed, str):
        try:
            role = parse_role(claimed)
        except ValueError:
            role = default_role
    if role is Role.SYSTEM and not allow_system:
        role = default_role
    scopes = frozenset(_names(claims.get(mapping.scopes)) or ()) & ALL_SCOPES
    tier = claims.get(mapping.tier)
    models = _names(claims.get(mapping.models))
    return Principal(
        subject=subject,
        role=role,
        scopes=scopes or default_scopes(role),
        tier=tier if isinstance(tier, str) and 0 < len(tier) <= 64 else "default",
        models=None if models is None else frozenset(models),
        via="jwt",
        expires_at=expires_at,
    )


class JWTVerifier:
    """Verify bearer JWTs into Principals; built once from ``settings.auth.jwt``.

    Inconsistent settings raise ``ConfigError`` here, at startup. The session made by
    ``session_factory`` (default: a plain aiohttp session) is ours and ``close`` closes it.
    """

    def __init__(
        self,
        config: JWT,
        session_factory: Callable[[], aiohttp.ClientSession] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._clock = clock
        self._jwks: JWKSCache | None = None
        algorithms = set(config.algorithms)
        if "HS256" in algorithms and not config.hs256_secret:
            raise ConfigError(["auth.jwt.algorithms: HS256 needs auth.jwt.hs256_secret"])
        if config.hs256_secret is not None:
            if "HS256" not in algorithms:
                raise ConfigError(["auth.jwt.algorithms: add HS256 to use auth.jwt.hs256_secret"])
            if len(config.hs256_secret.encode()) < MIN_HS256_SECRET_BYTES:
                raise ConfigError(
                    [f"auth.jwt.hs256_secret: use at least {MIN_HS256_SECRET_BYTES} bytes"]
                )
        if config.jwks_url and config.oidc_discovery_url:
            raise ConfigError(["auth.jwt: set jwks_url or oidc_discovery_url, not both"])
        if config.jwks_url or config.oidc_discovery_url:
            self._jwks = JWKSCache(
                jwks_url=config.jwks_url,
                discovery_url=config.oidc_discovery_url,
                cache_seconds=config.jwks_cache_seconds,
                session_factory=session_factory,
                clock=clock,
            )
        else:
            algorithms -= _ASYMMETRIC  # no key source for them
        if not algorithms:
            raise ConfigError(
                ["auth.jwt: no usable algorithm; set hs256_secret, jwks_url or oidc_discovery_url"]
            )
        self._algorithms = frozenset(algorithms)
        try:
            self._default_role = parse_role(config.claims.default_role)
        except ValueError as exc:
            raise ConfigError([f"auth.jwt.claims.default_role: {exc}"]) from None
        if self._default_role is Role.SYSTEM and self._algorithms & _ASYMMETRIC:
            raise ConfigError(["auth.jwt.claims.default_role: 'system' only for HS256 tokens"])
        self._jws = jwt.PyJWS()
        self._cache: OrderedDict[bytes, tuple[Principal, float]] = OrderedDict()

    @staticmethod
    def looks_like_jwt(token: str) -> bool:
        """Three base64url segments (the signature may be empty); decodes nothing."""
        return _SHAPE.fullmatch(token) is not None

    async def verify(self, token: str) -> Principal:
        """The token's Principal, or ``Unauthorized`` saying why not.

        ``ServiceUnavailable`` if the issuer's keys are needed but none could ever be fetched.
        """
        if len(token) > MAX_TOKEN_BYTES:
            raise Unauthorized("token too large")
        digest = hashlib.sha256(token.encode()).digest()
        now = self._clock()
        cached = self._cache.get(digest)
        if cached is not None:
            if cached[1] > now:
                self._cache.move_to_end(digest)
                return cached[0]
            del self._cache[digest]
        principal = await self._verify(token, now)
        until = min(principal.expires_at or now, now + PRINCIPAL_CACHE_SECONDS)
        if until > now:
            self._cache[digest] = (principal, until)
            if len(self._cache) > PRINCIPAL_CACHE_SIZE:
                self._cache.popitem(last=False)
        return principal

    async def _verify(self, token: str, now: float) -> Principal:
        if not self.looks_like_jwt(token):
            raise Unauthorized("malformed token")
        try:
            header = self._jws.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized("malformed token") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            shown = f" {alg!r}" if isinstance(alg, str) and _ALG_NAME.fullmatch(alg) else ""
            raise Unauthorized(f"token algorithm{shown} is not allowed")
        key: jwt.PyJWK | str
        issuer = self._config.issuer
        if alg == "HS256":
            assert self._config.hs256_secret is not None
            key = self._config.hs256_secret
        else:
            assert self._jwks is not None
            found = await self._jwks.get(header.get("kid"))
            if found is None:
                raise Unauthorized("token signing key not found (unknown kid)")
            if found.algorithm_name != alg:
                raise Unauthorized("token algorithm does not match its signing key")
            key = found
            issuer = issuer or self._jwks.issuer
        claims = self._signed_claims(token, key, alg)
        exp = check_claims(
            claims,
            now=now,
            leeway=self._config.leeway,
            issuer=issuer,
            audience=self._config.audience,
        )
        return principal_from_claims(
            claims,
            self._config.claims,
            default_role=self._default_role,
            allow_system=alg == "HS256",
            expires_at=exp,
        )

    def _signed_claims(self, token: str, key: jwt.PyJWK | str, alg: str) -> dict[str, Any]:
        try:
            decoded = self._jws.decode_complete(
                token, key=key, algorithms=[alg], options=_SIG_OPTIONS
            )
        except jwt.InvalidSignatureError:
            raise Unauthorized("invalid token signature") from None
        except jwt.InvalidAlgorithmError:
            raise Unauthorized("token algorithm is not allowed") from None
        except jwt.InvalidKeyError:
            raise Unauthorized("token signing key is not acceptable") from None
        except jwt.PyJWTError:
            raise Unauthorized("malformed token") from None
        try:
            claims = orjson.loads(decoded["payload"])
        except orjson.JSONDecodeError:
            raise Unauthorized("malformed token claims") from None
        if not isinstance(claims, dict):
            raise Unauthorized("malformed token claims")
        return claims

    async def close(self) -> None:
        if self._jwks is not None:
            await self._jwks.close()
