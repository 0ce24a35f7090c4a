"""The attack suite: every way in without the right credentials fails closed, clearly.

Real processes only: one simulator, a gateway with API keys and JWTs (HS256 with a shared secret,
RS256 from a JWKS served by a real HTTP server in this module) behind a trusted proxy
(127.0.0.1), and a second gateway that trusts no proxy. Each attack must end in a 401 or 403
JSON error in OpenAI's schema (the official SDK raises ``AuthenticationError`` /
``PermissionDeniedError``), and no key, token or secret may ever reach a log or the audit log.

The main gateway trusts ``X-Forwarded-For`` from 127.0.0.1 and blocks an address after three
failures, so each test speaks from its own forwarded client address (``ip``): one test's failures
never block another's requests.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import secrets
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import openai
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.auth.e2e import (
    FAST,
    Fleet,
    Node,
    admin,
    assert_clean_log,
    assert_error,
    assert_sdk_error,
    audit_records,
    call,
    chat,
    create_key,
    sdk,
    sdk_chat,
    wait_for,
)
from tests.plugins.processes import Sim

CACHE_TTL = 0.5
BLOCK_SECONDS = 2.0
ISSUER = "https://issuer.example"
AUDIENCE = "swarmgate"
HS256_SECRET = "jwt-" + secrets.token_hex(24)
_addresses = itertools.count(1)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class JWKSServer:
    """A real HTTP server publishing one RSA signing key (kid ``k1``) as a JWKS."""

    def __init__(self) -> None:
        self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private_key.public_key()))
        document = json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]})
        payload = document.encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def public_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


@pytest.fixture(scope="module")
def jwks() -> Iterator[JWKSServer]:
    server = JWKSServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def sim(fleet: Fleet) -> Sim:
    return fleet.sim({"m": FAST, "m2": FAST})


def _models(sim: Sim) -> dict[str, Any]:
    return {"m": {"deployments": [{"url": sim.url}]}, "m2": {"deployments": [{"url": sim.url}]}}


@pytest.fixture(scope="module")
def gw(fleet: Fleet, sim: Sim, jwks: JWKSServer) -> Iterator[Node]:
    config = {
        "models": _models(sim),
        "server": {"access_log": True},  # more log lines that could leak a key
        "auth": {
            "ip": {"trusted_proxies": ["127.0.0.1"]},
            "jwt": {"issuer": ISSUER, "audience": AUDIENCE, "jwks_url": jwks.url, "leeway": 1},
        },
    }
    node = fleet.gateway(
        config,
        {
            "SWARMGATE_AUTH__CACHE_TTL": str(CACHE_TTL),
            "SWARMGATE_AUTH__IP__MAX_FAILURES": "3",
            "SWARMGATE_AUTH__IP__FAILURE_WINDOW": "30",
            "SWARMGATE_AUTH__IP__BLOCK_SECONDS": str(BLOCK_SECONDS),
            "SWARMGATE_AUTH__JWT__ENABLED": "true",
            "SWARMGATE_AUTH__JWT__ALGORITHMS": "[HS256, RS256]",
            "SWARMGATE_AUTH__JWT__HS256_SECRET": HS256_SECRET,
        },
    )
    yield node
    assert_clean_log(node)


@pytest.fixture
def ip() -> str:
    """A client address of this test's own, forwarded by the trusted proxy (127.0.0.1)."""
    n = next(_addresses)
    return f"198.18.{n // 250}.{n % 250 + 1}"


def xff(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": address}


def sdk_from(gw: Node, key: str, address: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=gw.url + "/v1",
        api_key=key,
        max_retries=0,
        timeout=10,
        default_headers=xff(address),
    )


def sdk_chat_from(gw: Node, key: str, address: str, model: str = "m") -> None:
    """A chat completion through the SDK from ``address``; raises the SDK's errors."""
    with sdk_from(gw, key, address) as client:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "sub": "alice",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 300,
        "role": "user",
        "models": ["m"],
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def hs256(payload: dict[str, Any], secret: str = HS256_SECRET) -> str:
    return jwt.encode(payload, secret, algorithm="HS256")


# ----------------------------------------------------------------- missing and malformed


def test_missing_key_is_401_everywhere(gw: Node, ip: str) -> None:
    assert_error(chat(gw, None, **xff(ip)), 401, "authentication_error", "invalid_api_key")
    assert_error(call(gw.url + "/v1/models", headers=xff(ip)), 401, "authentication_error")
    assert_error(call(gw.url + "/admin/keys", headers=xff(ip)), 401, "authentication_error")


@pytest.mark.parametrize(
    "authorization",
    [
        "Basic dXNlcjpwYXNzd29yZA==",
        "Bearer",
        "Bearer ",
        "Bearer    ",
        "garbage",
        "Bearer garbage",
        "Token sk-sg-abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
        "bearer sk-sg-",
        "Bearer sk-sg-" + "A" * 400,
        "Bearer sk-sg-\u00e9\u00e8\u00e0-not-ascii-at-all-0123456789abcdefghij",
        "Bearer eyJhbGciOiJIUzI1NiJ9.not-base64!.x",
        "Bearer a.b.c",
        "Bearer " + "x" * 6000,
    ],
)
def test_malformed_authorization_is_401(gw: Node, ip: str, authorization: str) -> None:
    headers = {"Authorization": authorization, **xff(ip)}
    reply = call(
        gw.url + "/v1/chat/completions",
        "POST",
        json_body={"model": "m", "messages": [{"role": "user", "content": "x"}]},
        headers=headers,
    )
    assert_error(reply, 401, "authentication_error", "invalid_api_key")


def test_unknown_key_raises_authentication_error(gw: Node, ip: str) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        sdk_chat_from(gw, "sk-sg-" + secrets.token_urlsafe(32), ip)
    assert_sdk_error(caught.value, 401, "authentication_error")


# ----------------------------------------------------------------- key lifecycle


def test_expired_key_is_refused_once_its_expiry_passes(gw: Node, ip: str) -> None:
    reply = admin(gw, "POST", "/admin/keys", {"name": "e", "owner": "o", "expires_in": "2s"})
    secret = reply.body["secret"]
    assert sdk_chat(gw, secret)  # works (and is cached) before it expires
    wait_for(lambda: chat(gw, secret, **xff(ip)).status == 401, 5, what="expired key refused")
    with pytest.raises(openai.AuthenticationError):
        sdk_chat_from(gw, secret, ip)


def test_revoked_key_is_refused_at_once(gw: Node, ip: str) -> None:
    key_id, secret = create_key(gw)
    assert sdk_chat(gw, secret)
    assert admin(gw, "POST", f"/admin/keys/{key_id}/revoke").status == 200
    # The revocation drops this replica's cached principal before the admin call returns.
    assert_error(chat(gw, secret, **xff(ip)), 401, "authentication_error", "invalid_api_key")
    with pytest.raises(openai.AuthenticationError):
        sdk_chat_from(gw, secret, ip)


def test_rotated_key_old_secret_works_during_grace_then_not(gw: Node, ip: str) -> None:
    key_id, old = create_key(gw)
    assert sdk_chat(gw, old)
    rotating_at = time.monotonic()
    reply = admin(gw, "POST", f"/admin/keys/{key_id}/rotate", {"grace": "1s"})
    assert reply.status == 200, reply.text
    new = reply.body["secret"]
    assert new != old
    assert chat(gw, old, **xff(ip)).status == 200  # within the grace period
    assert chat(gw, new, **xff(ip)).status == 200
    wait_for(lambda: chat(gw, old, **xff(ip)).status == 401, 5, what="old secret refused")
    # Refused within grace + cache_ttl (plus scheduling slack), never before the grace ends.
    elapsed = time.monotonic() - rotating_at
    assert 1.0 <= elapsed < 1.0 + CACHE_TTL + 1.5, elapsed
    with pytest.raises(openai.AuthenticationError):
        sdk_chat_from(gw, old, ip)
    assert sdk_chat(gw, new)


# ----------------------------------------------------------------- scopes and models


def test_key_without_inference_scope_cannot_chat(gw: Node) -> None:
    _, secret = create_key(gw, scopes=["models:read"])
    with sdk(gw, secret) as client:
        assert [m.id for m in client.models.list()] == ["m", "m2"]
        with pytest.raises(openai.PermissionDeniedError) as caught:
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert_sdk_error(caught.value, 403, "permission_error")
    assert "inference:text" in caught.value.message


def test_user_key_on_admin_api_is_403(gw: Node) -> None:
    _, secret = create_key(gw, role="power_user")
    for method, path in [
        ("GET", "/admin/keys"),
        ("GET", "/admin/audit"),
        ("GET", "/admin/ip-blocks"),
    ]:
        assert_error(call(gw.url + path, method, key=secret), 403, "permission_error")
    body = {"name": "x", "owner": "x", "role": "admin"}
    reply = call(gw.url + "/admin/keys", "POST", key=secret, json_body=body)
    assert_error(reply, 403, "permission_error")


def test_model_not_allowed_for_key_is_403_and_hidden_from_listing(gw: Node) -> None:
    _, secret = create_key(gw, models=["m"])
    with sdk(gw, secret) as client:
        assert client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}]
        )
        with pytest.raises(openai.PermissionDeniedError) as caught:
            client.chat.completions.create(model="m2", messages=[{"role": "user", "content": "x"}])
        assert caught.value.code == "model_not_allowed"
        assert [m.id for m in client.models.list()] == ["m"]
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("m2")
        assert client.models.retrieve("m").id == "m"


def test_one_key_cannot_read_or_change_another(gw: Node) -> None:
    other_id, other = create_key(gw, owner="bob", models=["m2"])
    _, mine = create_key(gw, owner="alice", models=["m"])
    for method, path in [
        ("GET", f"/admin/keys/{other_id}"),
        ("POST", f"/admin/keys/{other_id}/revoke"),
        ("POST", f"/admin/keys/{other_id}/rotate"),
        ("POST", f"/admin/keys/{other_id}/expire"),
        ("GET", "/admin/keys?owner=bob"),
    ]:
        reply = call(gw.url + path, method, key=mine)
        assert_error(reply, 403, "permission_error")
        assert other_id not in reply.text and "bob" not in reply.text
    assert chat(gw, other, "m2").status == 200  # untouched
    models = call(gw.url + "/v1/models", key=mine).body["data"]
    assert [m["id"] for m in models] == ["m"]
    assert_error(call(gw.url + "/v1/models/m2", key=mine), 404, "invalid_request_error")


# ----------------------------------------------------------------- JWTs


def test_valid_jwts_work(gw: Node, jwks: JWKSServer) -> None:
    """The baseline that makes the JWT attacks below meaningful."""
    token = hs256(claims())
    assert sdk_chat(gw, token)
    with pytest.raises(openai.PermissionDeniedError):  # the token's models claim holds
        sdk_chat(gw, token, "m2")
    rs = jwt.encode(claims(), jwks.private_key, algorithm="RS256", headers={"kid": "k1"})
    assert sdk_chat(gw, rs)


def _alg_none() -> str:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{_b64(json.dumps(claims(role='admin', models=None)).encode())}."


def _tampered() -> str:
    header, _, signature = hs256(claims()).split(".")
    escalated = _b64(json.dumps(claims(role="admin", models=None)).encode())
    return f"{header}.{escalated}.{signature}"


def _flipped_signature() -> str:
    header, payload, signature = hs256(claims()).split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=="))
    raw[0] ^= 0xFF
    return f"{header}.{payload}.{_b64(bytes(raw))}"


def _confused(jwks: JWKSServer) -> str:
    """HS256 keyed with the issuer's RSA public key (algorithm confusion)."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode())
    body = _b64(json.dumps(claims(role="admin", models=None)).encode())
    mac = hmac.new(jwks.public_pem, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{_b64(mac)}"


@pytest.fixture(scope="module")
def stranger() -> rsa.RSAPrivateKey:
    """An RSA key the issuer never published."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _bad_tokens(jwks: JWKSServer, stranger: rsa.RSAPrivateKey) -> dict[str, str]:
    now = int(time.time())
    return {
        "alg none": _alg_none(),
        "alg HS512": jwt.encode(claims(), HS256_SECRET + "x" * 32, algorithm="HS512"),
        "wrong issuer": hs256(claims(iss="https://evil.example")),
        "wrong audience": hs256(claims(aud="someone-else")),
        "expired": hs256(claims(iat=now - 600, exp=now - 120)),
        "no exp": hs256(claims(exp=None)),
        "not yet valid": hs256(claims(nbf=now + 600)),
        "tampered payload": _tampered(),
        "flipped signature": _flipped_signature(),
        "wrong secret": hs256(claims(), "not-the-secret-" + "y" * 32),
        "unknown kid": jwt.encode(claims(), stranger, algorithm="RS256", headers={"kid": "k9"}),
        "known kid, wrong key": jwt.encode(
            claims(), stranger, algorithm="RS256", headers={"kid": "k1"}
        ),
        "algorithm confusion": _confused(jwks),
    }


BAD_TOKENS = [
    "alg none",
    "alg HS512",
    "wrong issuer",
    "wrong audience",
    "expired",
    "no exp",
    "not yet valid",
    "tampered payload",
    "flipped signature",
    "wrong secret",
    "unknown kid",
    "known kid, wrong key",
    "algorithm confusion",
]


@pytest.mark.parametrize("case", BAD_TOKENS)
def test_bad_jwt_is_401(
    gw: Node, jwks: JWKSServer, stranger: rsa.RSAPrivateKey, ip: str, case: str
) -> None:
    token = _bad_tokens(jwks, stranger)[case]
    with pytest.raises(openai.AuthenticationError) as caught:
        sdk_chat_from(gw, token, ip)
    assert_sdk_error(caught.value, 401, "authentication_error")
    assert token not in caught.value.message
    # Nor does it reach the admin API, whatever role it claims.
    assert_error(
        call(gw.url + "/admin/keys", key=token, headers=xff(ip)), 401, "authentication_error"
    )


# ----------------------------------------------------------------- brute force and IP


def _block(gw: Node, **headers: str) -> float:
    """Three wrong keys; returns a time just before the block began."""
    started = 0.0
    for _ in range(3):
        started = time.monotonic()
        bad = "sk-sg-" + secrets.token_urlsafe(32)
        assert_error(chat(gw, bad, **headers), 401, "authentication_error")
    return started


def test_brute_force_blocks_the_forwarded_address_only(gw: Node, ip: str) -> None:
    """From a trusted proxy, each forwarded client address is counted and blocked on its own."""
    _, good = create_key(gw)
    blocked_at = _block(gw, **xff(ip))
    reply = chat(gw, good, **xff(ip))  # the right key does not help a blocked address
    assert_error(reply, 403, "permission_error", "ip_blocked")
    assert 1 <= int(reply.headers["retry-after"]) <= BLOCK_SECONDS
    # A client-written entry left of the real address changes nothing (read from the right).
    assert_error(chat(gw, good, **xff(f"203.0.113.7, {ip}")), 403, "permission_error", "ip_blocked")
    assert chat(gw, good, **xff("198.19.0.1")).status == 200  # another client is not blocked
    assert chat(gw, good).status == 200  # nor is the proxy itself

    blocks = admin(gw, "GET", "/admin/ip-blocks").body["data"]
    assert {"cidr": f"{ip}/32", "source": "failures"}.items() <= next(
        b for b in blocks if b["cidr"] == f"{ip}/32"
    ).items()
    wait_for(lambda: chat(gw, good, **xff(ip)).status == 200, BLOCK_SECONDS + 3, what="unblock")
    assert time.monotonic() - blocked_at >= BLOCK_SECONDS

    def autoblock_audited() -> bool:
        return any(r["target"] == ip for r in audit_records(gw, action="ip.autoblock"))

    wait_for(autoblock_audited, 5, what="ip.autoblock audited")


@pytest.fixture(scope="module")
def untrusting(fleet: Fleet, sim: Sim) -> Node:
    """A gateway that trusts no proxy, so X-Forwarded-For is the client's own word."""
    return fleet.gateway(
        {"models": _models(sim)},
        {
            "SWARMGATE_AUTH__IP__MAX_FAILURES": "3",
            "SWARMGATE_AUTH__IP__FAILURE_WINDOW": "30",
            "SWARMGATE_AUTH__IP__BLOCK_SECONDS": str(BLOCK_SECONDS),
        },
    )


def test_brute_force_blocks_the_peer_until_the_window_ends(untrusting: Node) -> None:
    gw = untrusting
    _, good = create_key(gw)
    blocked_at = _block(gw)
    assert_error(chat(gw, good), 403, "permission_error", "ip_blocked")
    with pytest.raises(openai.PermissionDeniedError) as caught:
        sdk_chat(gw, good)
    assert caught.value.code == "ip_blocked"
    assert_error(call(gw.url + "/admin/keys", key=gw.admin_key), 403, "permission_error")
    wait_for(lambda: chat(gw, good).status == 200, BLOCK_SECONDS + 3, what="block lifted")
    assert time.monotonic() - blocked_at >= BLOCK_SECONDS
    assert_clean_log(gw)


def test_spoofed_forwarded_for_does_not_evade_a_block(untrusting: Node) -> None:
    gw = untrusting
    _, good = create_key(gw)
    try:
        _block(gw)
        for spoof in ["203.0.113.99", "10.0.0.1", "127.0.0.2", "::1"]:
            assert_error(chat(gw, good, **xff(spoof)), 403, "permission_error", "ip_blocked")
        wait_for(lambda: chat(gw, good).status == 200, BLOCK_SECONDS + 3, what="block lifted")
        # An attacker rotating forged X-Forwarded-For values is still one address: the peer's.
        for n in range(3):
            bad = "sk-sg-" + secrets.token_urlsafe(32)
            assert_error(chat(gw, bad, **xff(f"203.0.113.{n}")), 401, "authentication_error")
        assert_error(chat(gw, good), 403, "permission_error", "ip_blocked")
    finally:
        # Leave the gateway unblocked for whatever runs next, pass or fail.
        wait_for(lambda: chat(gw, good).status == 200, BLOCK_SECONDS + 3, what="block lifted")


# ----------------------------------------------------------------- nothing leaks


def test_no_key_secret_or_token_reaches_logs_or_audit(
    gw: Node, sim: Sim, jwks: JWKSServer, stranger: rsa.RSAPrivateKey, fleet: Fleet
) -> None:
    secret_values = [
        gw.admin_key,
        gw.env["SWARMGATE_AUTH__SECRET"],
        HS256_SECRET,
    ]
    tokens: list[str] = []
    key_id, first = create_key(gw, models=["m"], expires_in="1h")
    secret_values.append(first)
    assert sdk_chat(gw, first)
    rotated = admin(gw, "POST", f"/admin/keys/{key_id}/rotate", {"grace": "1h"}).body["secret"]
    secret_values.append(rotated)
    assert sdk_chat(gw, rotated)
    assert sdk_chat(gw, first)
    admin(gw, "POST", f"/admin/keys/{key_id}/expire", {"expires_in": "2h"})
    # Failures with wrong keys and wrong tokens, each from its own address (no block).
    for n, wrong in enumerate(["sk-sg-" + secrets.token_urlsafe(32) for _ in range(2)]):
        secret_values.append(wrong)
        assert chat(gw, wrong, **xff(f"198.20.0.{n + 1}")).status == 401
    good_jwt = hs256(claims(sub="leak-test"))
    tokens.append(good_jwt)
    assert sdk_chat(gw, good_jwt)
    for n, bad in enumerate(_bad_tokens(jwks, stranger).values()):
        tokens.append(bad)
        assert chat(gw, bad, **xff(f"198.21.0.{n + 1}")).status == 401
    assert admin(gw, "POST", f"/admin/keys/{key_id}/revoke").status == 200
    assert chat(gw, rotated, **xff("198.22.0.1")).status == 401
    # The same secret sent in other headers a careless logger would print.
    reply = call(
        gw.url + "/v1/models",
        key=gw.admin_key,
        headers={"X-Api-Key": first, "Cookie": f"session={rotated}", "X-Request-Id": "leak-1"},
    )
    assert reply.status == 200

    def audit_has_revocation() -> bool:
        return any(r["target"] == key_id for r in audit_records(gw, action="key.revoke"))

    wait_for(audit_has_revocation, 5, what="the scenario's audit records stored")
    audit = json.dumps(audit_records(gw))
    assert '"auth.failure"' in audit and '"key.rotate"' in audit  # not a vacuous scan

    log = gw.output()
    assert "POST /v1/chat/completions" in log  # the access log is on: not a vacuous scan
    spools = "".join(p.read_text(errors="replace") for p in fleet.root.glob("*.spool*"))
    places = {"gateway log": log, "sim log": sim.output(), "audit log": audit, "spool": spools}
    needles: list[tuple[str, str]] = []
    for value in secret_values:
        needles.append(("secret", value))
        if value.startswith("sk-sg-"):
            needles.append(("secret body", value[12:]))  # the part the visible prefix hides
    for token in tokens:
        needles.append(("token", token))
        signature = token.rsplit(".", 1)[1]
        if len(signature) > 16:
            needles.append(("token signature", signature))
    for place, text in places.items():
        for kind, value in needles:
            assert value not in text, f"a {kind} appears in the {place}"
