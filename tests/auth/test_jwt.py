"""JWTVerifier and JWKSCache against a real OIDC issuer served by aiohttp.web on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from swarmgate.auth.jwt import (
    MAX_STALE_SECONDS,
    MAX_TOKEN_BYTES,
    PRINCIPAL_CACHE_SIZE,
    REFETCH_INTERVAL,
    JWKSCache,
    JWTVerifier,
)
from swarmgate.auth.roles import default_scopes
from swarmgate.config import JWT, JWTClaims
from swarmgate.errors import ConfigError, ServiceUnavailable, Unauthorized
from swarmgate.types import Role

SECRET = "s" * 40
ISSUER = "https://issuer.test"
AUDIENCE = "swarmgate"


class FakeClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class Issuer:
    """A tiny OIDC issuer: a discovery document and a JWKS, counting hits."""

    def __init__(self) -> None:
        self.jwks: list[dict[str, Any]] = []
        self.jwks_hits = 0
        self.discovery_hits = 0
        self.issuer = ISSUER
        self.url = ""
        self._runner: web.AppRunner | None = None

    def publish(self, public_key: Any, kid: str | None, **extra: Any) -> None:
        if isinstance(public_key, rsa.RSAPublicKey):
            jwk = jwt.algorithms.RSAAlgorithm.to_jwk(public_key, as_dict=True)
        else:
            jwk = jwt.algorithms.ECAlgorithm.to_jwk(public_key, as_dict=True)
        if kid is not None:
            jwk["kid"] = kid
        self.jwks.append({**jwk, **extra})

    async def _discovery(self, request: web.Request) -> web.Response:
        self.discovery_hits += 1
        return web.json_response({"issuer": self.issuer, "jwks_uri": f"{self.url}/jwks"})

    async def _keys(self, request: web.Request) -> web.Response:
        self.jwks_hits += 1
        return web.json_response({"keys": self.jwks})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/jwks", self._keys)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def discovery_url(self) -> str:
        return f"{self.url}/.well-known/openid-configuration"


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def rsa_key2() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
async def issuer(rsa_key: rsa.RSAPrivateKey, ec_key: Any) -> AsyncIterator[Issuer]:
    server = Issuer()
    server.publish(rsa_key.public_key(), "rsa-1")
    server.publish(ec_key.public_key(), "ec-1")
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


MakeVerifier = Callable[..., JWTVerifier]


@pytest.fixture
async def make_verifier(issuer: Issuer, clock: FakeClock) -> AsyncIterator[MakeVerifier]:
    made: list[JWTVerifier] = []

    def make(**overrides: Any) -> JWTVerifier:
        fields: dict[str, Any] = {
            "enabled": True,
            "oidc_discovery_url": issuer.discovery_url,
            "audience": AUDIENCE,
        }
        fields.update(overrides)
        verifier = JWTVerifier(JWT(**fields), clock=clock)
        made.append(verifier)
        return verifier

    yield make
    for verifier in made:
        await verifier.close()


def claims(clock: FakeClock, **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "sub": "alice",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": int(clock.now),
        "exp": int(clock.now) + 3600,
    }
    base.update(extra)
    return {key: value for key, value in base.items() if value is not None}


def rs256(key: rsa.RSAPrivateKey, payload: dict[str, Any], kid: str | None = "rsa-1") -> str:
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(payload, key, algorithm="RS256", headers=headers)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], payload: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


async def rejected(verify: Awaitable[Any], token: str) -> str:
    with pytest.raises(Unauthorized) as info:
        await verify
    message = info.value.message
    if token:
        assert token not in message
    for segment in token.split("."):
        assert len(segment) < 8 or segment not in message
    return message


# ---- discovery, JWKS and the principal cache


async def test_oidc_discovery_verifies_rs256_and_es256(
    make_verifier: MakeVerifier, issuer: Issuer, rsa_key: Any, ec_key: Any, clock: FakeClock
) -> None:
    verifier = make_verifier()
    principal = await verifier.verify(rs256(rsa_key, claims(clock)))
    assert principal.subject == "alice"
    assert principal.via == "jwt"
    assert principal.role is Role.USER
    assert principal.scopes == default_scopes(Role.USER)
    assert principal.expires_at == int(clock.now) + 3600
    es = jwt.encode(claims(clock, sub="bob"), ec_key, algorithm="ES256", headers={"kid": "ec-1"})
    assert (await verifier.verify(es)).subject == "bob"
    assert (issuer.discovery_hits, issuer.jwks_hits) == (1, 1)


async def test_jwks_url_without_discovery(
    make_verifier: MakeVerifier, issuer: Issuer, rsa_key: Any, clock: FakeClock
) -> None:
    verifier = make_verifier(oidc_discovery_url=None, jwks_url=f"{issuer.url}/jwks")
    # No issuer configured and none discovered: any iss is accepted.
    principal = await verifier.verify(rs256(rsa_key, claims(clock, iss="https://other")))
    assert principal.subject == "alice"
    assert (issuer.discovery_hits, issuer.jwks_hits) == (0, 1)


async def test_discovered_issuer_is_required(
    make_verifier: MakeVerifier, rsa_key: Any, clock: FakeClock
) -> None:
    verifier = make_verifier()
    token = rs256(rsa_key, claims(clock, iss="https://evil.test"))
    assert await rejected(verifier.verify(token), token) == "invalid issuer"
    token = rs256(rsa_key, claims(clock, iss=None))
    assert await rejected(verifier.verify(token), token) == "invalid issuer"


async def test_cache_hits_skip_the_issuer_and_are_cheap(
    make_verifier: MakeVerifier, issuer: Issuer, rsa_key: Any, clock: FakeClock
) -> None:
    verifier = make_verifier()
    token = rs256(rsa_key, claims(clock))
    first = await verifier.verify(token)
    started = time.perf_counter()
    for _ in range(2000):
        assert await verifier.verify(token) is first
    per_call = (time.perf_counter() - started) / 2000
    assert per_call < 100e-6  # an RS256 check costs far more; a hit is a hash and a lookup
    clock.now += 3 * REFETCH_INTERVAL  # past the 60 s principal cache, within the JWKS cache
    again = await verifier.verify(token)
    assert again == first and again is not first
    assert issuer.jwks_hits == 1


async def test_principal_cache_is_bounded(make_verifier: MakeVerifier, clock: FakeClock) -> None:
    verifier = make_verifier(algorithms=("HS256",), hs256_secret=SECRET, oidc_discovery_url=None)
    tokens = [
        jwt.encode(claims(clock, sub=f"u{i}"), SECRET, algorithm="HS256")
        for i in range(PRINCIPAL_CACHE_SIZE + 5)
    ]
    for token in tokens:
        await verifier.verify(token)
    assert len(verifier._cache) == PRINCIPAL_CACHE_SIZE
    oldest = hashlib.sha256(tokens[0].encode()).digest()
    newest = hashlib.sha256(tokens[-1].encode()).digest()
    assert oldest not in verifier._cache and newest in verifier._cache


async def test_session_factory_is_used_and_closed(
    issuer: Issuer, rsa_key: Any, clock: FakeClock
) -> None:
    sessions: list[aiohttp.ClientSession] = []

    def factory() -> aiohttp.ClientSession:
        sessions.append(aiohttp.ClientSession())
        return sessions[-1]

    config = JWT(enabled=True, oidc_discovery_url=issuer.discovery_url, audience=AUDIENCE)
    verifier = JWTVerifier(config, session_factory=factory, clock=clock)
    await verifier.verify(rs256(rsa_key, claims(clock)))
    await verifier.close()
    assert len(sessions) == 1 and sessions[0].closed


# ---- key rotation, refetch rate limit, stale keys


async def test_key_rotation_new_kid_verifies_after_refetch(
    make_verifier: MakeVerifier, issuer: Issuer, rsa_key: Any, rsa_key2: Any, clock: FakeClock
) -> None:
    verifier = make_verifier()
    await verifier.verify(rs256(rsa_key, claims(clock)))
    issuer.publish(rsa_key2.public_key(), "rsa-2")
    clock.now += REFETCH_INTERVAL + 1
    principal = await verifier.verify(rs256(rsa_key2, claims(clock, sub="rotated"), kid="rsa-2"))
    assert principal.subject == "rotated"
    assert issuer.jwks_hits == 2


async def test_unknown_kid_refetches_at_most_once_per_interval(
    make_verifier: MakeVerifier, issuer: Issuer, rsa_key: Any, clock: FakeClock
) -> None:
    verifier = make_verifier()
    await verifier.verify(rs256(rsa_key, claims(clock)))
    assert issuer.jwks_hits == 1
    clock.now += REFETCH_INTERVAL + 1

    async def attack() -> None:
        token = rs256(rsa_key, claims(clock), kid=uuid.uuid4().hex)
        assert await rejected(verifier.verify(token), token) == (
            "token signing key not found (unknown kid)"
        )

    await asyncio.gather(*(attack() for _ in range(20)))
    assert issuer.jwks_hits == 2  # one refetch for the whole burst
    for _ in range(20):
        await attack()
    assert issuer.jwks_hits == 2
    clock.now += REFETCH_INTERVAL + 1
    await attack()
    assert issuer.jwks_hits == 3
    # Known keys keep verifying throughout.
    assert (await verifier.verify(rs256(rsa_key, claims(clock, sub="ok")))).subject == "ok"


async def test_stale_keys_serve_while_issuer_is_down(
    make_verifier: MakeVerifier, issuer: Issuer, rsa_key: Any, clock: FakeClock
) -> None:
    verifier = make_verifier(jwks_cache_seconds=60)
    far = int(clock.now) + 10 * 86400
    await verifier.verify(rs256(rsa_key, claims(clock, exp=far)))
    await issuer.stop()
    clock.now += 600  # cache expired; the refresh fails; the old keys serve
    principal = await verifier.verify(rs256(rsa_key, claims(clock, sub="stale", exp=far)))
    assert principal.subject == "stale"
    token = rs256(rsa_key, claims(clock, exp=far), kid="rsa-unknown")
    await rejected(verifier.verify(token), token)
    clock.now += MAX_STALE_SECONDS
    with pytest.raises(ServiceUnavailable, match="identity provider unavailable"):
        await verifier.verify(rs256(rsa_key, claims(clock, sub="too-stale", exp=far)))


async def test_issuer_never_reached_is_service_unavailable(
    make_verifier: MakeVerifier, issuer: Issuer, rsa_key: Any, clock: FakeClock
) -> None:
    verifier = make_verifier()
    await issuer.stop()
    with pytest.raises(ServiceUnavailable):
        await verifier.verify(rs256(rsa_key, claims(clock)))


async def test_missing_kid_uses_the_only_key(
    issuer: Issuer, rsa_key: Any, clock: FakeClock
) -> None:
    cache = JWKSCache(jwks_url=f"{issuer.url}/jwks", clock=clock)
    try:
        assert await cache.get(None) is None  # two keys published: ambiguous
        issuer.jwks = issuer.jwks[:1]
        clock.now += REFETCH_INTERVAL + 1
        key = await cache.get(None)
        assert key is not None and key.key_id == "rsa-1"
    finally:
        await cache.close()


# ---- HS256 and claims mapping


async def test_hs256_shared_secret_and_system_role(
    make_verifier: MakeVerifier, clock: FakeClock
) -> None:
    verifier = make_verifier(algorithms=("HS256",), hs256_secret=SECRET, oidc_discovery_url=None)
    token = jwt.encode(claims(clock, role="system"), SECRET, algorithm="HS256")
    principal = await verifier.verify(token)
    assert principal.role is Role.SYSTEM
    forged = jwt.encode(claims(clock, role="system"), "x" * 40, algorithm="HS256")
    assert await rejected(verifier.verify(forged), forged) == "invalid token signature"


async def test_oidc_token_cannot_claim_system(
    make_verifier: MakeVerifier, rsa_key: Any, clock: FakeClock
) -> None:
    verifier = make_verifier()
    principal = await verifier.verify(rs256(rsa_key, claims(clock, role="system")))
    assert principal.role is Role.USER
    assert principal.scopes == default_scopes(Role.USER)


@pytest.mark.parametrize(
    ("extra", "role", "scopes", "tier", "models"),
    [
        (
            {"role": "power_user", "scope": "models:read openid inference:text"},
            Role.POWER_USER,
            {"models:read", "inference:text"},
            "default",
            None,
        ),
        (
            {"role": "Power User", "scope": ["cluster:read"], "tier": "gold"},
            Role.POWER_USER,
            {"cluster:read"},
            "gold",
            None,
        ),
        ({"role": "admin"}, Role.ADMIN, default_scopes(Role.ADMIN), "default", None),
        (
            {"role": "wizard", "scope": "openid email"},
            Role.GUEST,
            default_scopes("guest"),
            "default",
            None,
        ),
        (
            {"role": 7, "models": ["llama", "qwen"]},
            Role.GUEST,
            default_scopes("guest"),
            "default",
            {"llama", "qwen"},
        ),
        (
            {"tier": "", "models": "llama qwen"},
            Role.GUEST,
            default_scopes("guest"),
            "default",
            {"llama", "qwen"},
        ),
    ],
)
async def test_claims_map_to_principal(
    make_verifier: MakeVerifier,
    rsa_key: Any,
    clock: FakeClock,
    extra: dict[str, Any],
    role: Role,
    scopes: set[str],
    tier: str,
    models: set[str] | None,
) -> None:
    verifier = make_verifier(claims=JWTClaims(default_role="guest"))
    principal = await verifier.verify(rs256(rsa_key, claims(clock, **extra)))
    assert principal.role is role
    assert principal.scopes == frozenset(scopes)
    assert principal.tier == tier
    assert principal.models == (None if models is None else frozenset(models))
    assert principal.key_id is None


async def test_custom_claim_names(
    make_verifier: MakeVerifier, rsa_key: Any, clock: FakeClock
) -> None:
    mapping = JWTClaims(subject="email", role="gw_role", scopes="scp", tier="plan", models="llms")
    verifier = make_verifier(claims=mapping)
    token = rs256(
        rsa_key,
        claims(
            clock,
            email="a@example.com",
            gw_role="admin",
            scp=["admin"],
            plan="team",
            llms=["m"],
            role="guest",
        ),
    )
    principal = await verifier.verify(token)
    assert (principal.subject, principal.role, principal.tier) == (
        "a@example.com",
        Role.ADMIN,
        "team",
    )
    assert principal.scopes == {"admin"} and principal.models == {"m"}
    no_subject = rs256(rsa_key, claims(clock))
    assert "subject" in await rejected(verifier.verify(no_subject), no_subject)


# ---- rejections


async def test_alg_none_is_rejected(make_verifier: MakeVerifier, clock: FakeClock) -> None:
    verifier = make_verifier(algorithms=("HS256", "RS256"), hs256_secret=SECRET)
    for alg in ("none", "None", "NONE"):
        token = forge({"alg": alg, "typ": "JWT"}, claims(clock, role="system"), lambda _: b"")
        assert verifier.looks_like_jwt(token)
        assert (
            await rejected(verifier.verify(token), token)
            == f"token algorithm {alg!r} is not allowed"
        )
    unsigned = jwt.encode(claims(clock), None, algorithm="none")
    await rejected(verifier.verify(unsigned), unsigned)


async def test_algorithm_confusion_is_rejected(
    make_verifier: MakeVerifier, rsa_key: Any, clock: FakeClock
) -> None:
    pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    def hmac_with_pem(data: bytes) -> bytes:
        return hmac.new(pem, data, hashlib.sha256).digest()

    token = forge({"alg": "HS256", "kid": "rsa-1"}, claims(clock, role="admin"), hmac_with_pem)
    rs_only = make_verifier()
    assert await rejected(rs_only.verify(token), token) == "token algorithm 'HS256' is not allowed"
    both = make_verifier(algorithms=("RS256", "HS256"), hs256_secret=SECRET)
    assert await rejected(both.verify(token), token) == "invalid token signature"
    # An RS256 header on a token whose kid names the EC key: the key's algorithm wins.
    ec_kid = rs256(rsa_key, claims(clock), kid="ec-1")
    assert "does not match" in await rejected(rs_only.verify(ec_kid), ec_kid)


async def test_es256_rejected_when_not_configured(
    make_verifier: MakeVerifier, ec_key: Any, clock: FakeClock
) -> None:
    verifier = make_verifier(algorithms=("RS256",))
    token = jwt.encode(claims(clock), ec_key, algorithm="ES256", headers={"kid": "ec-1"})
    assert await rejected(verifier.verify(token), token) == "token algorithm 'ES256' is not allowed"


async def test_wrong_audience(make_verifier: MakeVerifier, rsa_key: Any, clock: FakeClock) -> None:
    verifier = make_verifier()
    for aud in ("someone-else", ["a", "b"], None):
        token = rs256(rsa_key, claims(clock, aud=aud))
        assert await rejected(verifier.verify(token), token) == "invalid audience"
    listed = rs256(rsa_key, claims(clock, aud=["other", AUDIENCE]))
    assert (await verifier.verify(listed)).subject == "alice"


async def test_configured_issuer_overrides_discovery(
    make_verifier: MakeVerifier, rsa_key: Any, clock: FakeClock
) -> None:
    verifier = make_verifier(issuer="https://configured.test")
    token = rs256(rsa_key, claims(clock))  # iss is the discovered issuer
    assert await rejected(verifier.verify(token), token) == "invalid issuer"
    ok = rs256(rsa_key, claims(clock, iss="https://configured.test"))
    assert (await verifier.verify(ok)).subject == "alice"


async def test_expiry_with_leeway_and_clock_skew(
    make_verifier: MakeVerifier, rsa_key: Any, clock: FakeClock
) -> None:
    verifier = make_verifier(leeway=30)
    exp = int(clock.now) + 10
    token = rs256(rsa_key, claims(clock, exp=exp))
    assert (await verifier.verify(token)).expires_at == exp
    clock.now = exp + 20  # expired, but within the leeway; the cached principal has lapsed
    assert (await verifier.verify(token)).subject == "alice"
    clock.now = exp + 31
    assert await rejected(verifier.verify(token), token) == "token expired"


async def test_not_before_and_issued_at_in_the_future(
    make_verifier: MakeVerifier, rsa_key: Any, clock: FakeClock
) -> None:
    verifier = make_verifier(leeway=30)
    soon = rs256(rsa_key, claims(clock, nbf=int(clock.now) + 20))
    assert (await verifier.verify(soon)).subject == "alice"
    later = rs256(rsa_key, claims(clock, nbf=int(clock.now) + 120))
    assert await rejected(verifier.verify(later), later) == "token not yet valid (nbf)"
    clock.now += 100
    assert (await verifier.verify(later)).subject == "alice"
    future_iat = rs256(rsa_key, claims(clock, iat=int(clock.now) + 600))
    assert (
        await rejected(verifier.verify(future_iat), future_iat)
        == "token issued in the future (iat)"
    )


async def test_missing_or_bad_exp_is_rejected(
    make_verifier: MakeVerifier, rsa_key: Any, clock: FakeClock
) -> None:
    verifier = make_verifier()
    token = rs256(rsa_key, claims(clock, exp=None))
    assert await rejected(verifier.verify(token), token) == "token has no expiry (exp)"
    for bad in ("tomorrow", True):
        token = rs256(rsa_key, claims(clock, exp=bad))
        assert await rejected(verifier.verify(token), token) == "invalid exp claim"


async def test_tampered_tokens_are_rejected(
    make_verifier: MakeVerifier, rsa_key: Any, clock: FakeClock
) -> None:
    verifier = make_verifier()
    token = rs256(rsa_key, claims(clock))
    header, payload, signature = token.split(".")
    flipped = signature[:10] + ("A" if signature[10] != "A" else "B") + signature[11:]
    elevated = b64(json.dumps(claims(clock, role="admin")).encode())
    for bad in (f"{header}.{payload}.{flipped}", f"{header}.{elevated}.{signature}"):
        assert await rejected(verifier.verify(bad), bad) == "invalid token signature"


async def test_unknown_kid_after_one_refetch(
    make_verifier: MakeVerifier, issuer: Issuer, rsa_key2: Any, clock: FakeClock
) -> None:
    verifier = make_verifier()
    token = rs256(rsa_key2, claims(clock), kid="never-published")
    assert "unknown kid" in await rejected(verifier.verify(token), token)
    assert issuer.jwks_hits == 1  # the first fetch already was the refetch
    clock.now += REFETCH_INTERVAL + 1
    assert "unknown kid" in await rejected(verifier.verify(token), token)
    assert issuer.jwks_hits == 2


@pytest.mark.parametrize(
    "token",
    [
        "",
        "garbage",
        "a.b",
        "a.b.c",
        "....",
        "eyJhbGciOiJSUzI1NiJ9.bm90IGpzb24.c2ln",  # payload is not JSON
        "bm90IGpzb24.eyJzdWIiOiJhIn0.c2ln",  # header is not JSON
        "W10.eyJzdWIiOiJhIn0.c2ln",  # header is a JSON list
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl",  # HS256, no secret configured
        "héllo.wörld.tøken",
        "a.b.c d",
    ],
)
async def test_garbage_tokens_are_rejected(make_verifier: MakeVerifier, token: str) -> None:
    verifier = make_verifier()
    await rejected(verifier.verify(token), token)


async def test_oversized_token_rejected_before_decoding(
    make_verifier: MakeVerifier, issuer: Issuer, rsa_key: Any, clock: FakeClock
) -> None:
    verifier = make_verifier()
    token = rs256(rsa_key, claims(clock, padding="x" * MAX_TOKEN_BYTES))
    assert await rejected(verifier.verify(token), token) == "token too large"
    assert issuer.jwks_hits == 0  # refused before a key was even looked up


def test_looks_like_jwt() -> None:
    assert JWTVerifier.looks_like_jwt("eyJh.eyJz.c2ln")
    assert JWTVerifier.looks_like_jwt("eyJh.eyJz.")
    for text in ("", "a.b", "a.b.c.d", "sk-sg-abc", "a..c", ".b.c", "a.b.c ", "a+b.c.d", "a=.b.c"):
        assert not JWTVerifier.looks_like_jwt(text), text


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"algorithms": ("HS256",)}, "HS256 needs"),
        ({"hs256_secret": SECRET}, "add HS256"),
        ({"algorithms": ("HS256",), "hs256_secret": "short"}, "at least 32 bytes"),
        ({"jwks_url": "https://a", "oidc_discovery_url": "https://b"}, "not both"),
        ({}, "no usable algorithm"),
        ({"jwks_url": "https://a", "claims": JWTClaims(default_role="boss")}, "unknown role"),
        ({"jwks_url": "https://a", "claims": JWTClaims(default_role="system")}, "only for HS256"),
    ],
)
def test_config_errors(fields: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        JWTVerifier(JWT(enabled=True, **fields))
