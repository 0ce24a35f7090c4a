"""HTTPS on the gateway's port: HTTP/2 from a real client (Debian's curl) against granian,
TLS 1.2 as the minimum, seed 003's cipher suites under uvicorn, and certificates rotated
without a restart under both servers. The certificates are self-signed ECDSA P-256 ones
(seed 003's key algorithm), generated here."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from swarmgate.config import parse_settings
from swarmgate.errors import ConfigError
from tests.api.e2e import FAST
from tests.plugins.processes import SWARMGATE, Processes, Sim, free_port, new_admin_key, spawn

CURL = shutil.which("curl") or "/usr/bin/curl"
SEED_003_CIPHERS = [
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
]


def write_pair(cert_path: Path, key_path: Path, name: str) -> bytes:
    """A self-signed certificate for 127.0.0.1 and its key; the certificate's DER."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Written beside, then renamed: a rotation replaces each file at once.
    for path, data in (
        (key_path, key_pem),
        (cert_path, cert.public_bytes(serialization.Encoding.PEM)),
    ):
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return cert.public_bytes(serialization.Encoding.DER)


@dataclass
class HttpsGateway:
    proc: subprocess.Popen[bytes]
    log: Path
    port: int
    admin_key: str
    cert: Path
    key: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def client_context(
    *, max_version: ssl.TLSVersion | None = None, ciphers: str | None = None
) -> ssl.SSLContext:
    # The certificate is checked by curl (--cacert); here only what is served is read.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if max_version is not None:
        ctx.maximum_version = max_version
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    return ctx


def handshake(port: int, ctx: ssl.SSLContext) -> tuple[bytes, str, str]:
    """The served certificate (DER), the protocol and the cipher of one handshake."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        cipher = tls.cipher()
        assert der is not None and cipher is not None
        return der, str(tls.version()), cipher[0]


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    yield procs
    procs.stop_all()


@pytest.fixture
def sim(processes: Processes) -> Sim:
    return processes.sim({"chat": FAST})


def start_https(
    processes: Processes, sim: Sim, server: str, tls: dict[str, Any] | None = None
) -> HttpsGateway:
    root = processes.root
    cert, key = root / "cert.pem", root / "key.pem"
    write_pair(cert, key, "first")
    port = free_port()
    config = {
        "server": {
            "host": "127.0.0.1",
            "port": port,
            "server": server,
            "tls": {"cert_file": "cert.pem", "key_file": "key.pem", **(tls or {})},
        },
        "models": {"chat": {"deployments": [{"url": sim.url}]}},
        "store": {"url": f"sqlite+aiosqlite:///{root / 'gw.db'}"},
        "audit": {"spool_path": str(root / "audit.spool")},
    }
    path = root / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    admin_key = new_admin_key()
    env = {"SWARMGATE_ADMIN_KEY": admin_key, "SWARMGATE_AUTH__SECRET": "srv-" + "ab" * 20}
    log = root / "gateway.log"
    proc = spawn([*SWARMGATE, "serve", "--config", str(path)], log, env)
    gw = HttpsGateway(proc, log, port, admin_key, cert, key)
    from tests.plugins.processes import Process

    processes.started.append(Process(proc, log, gw.url))
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, gw.output()
        try:
            handshake(port, client_context())
            return gw
        except OSError:
            assert time.monotonic() < deadline, gw.output()
            time.sleep(0.1)


def curl(gw: HttpsGateway, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CURL, "--silent", "--show-error", "--cacert", str(gw.cert), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_granian_serves_http2_to_curl(processes: Processes, sim: Sim) -> None:
    gw = start_https(processes, sim, "granian")
    version = curl(gw, "--http2", "-o", "/dev/null", "-w", "%{http_version}", gw.url + "/health")
    assert version.returncode == 0, version.stderr
    assert version.stdout == "2"
    chat = curl(
        gw,
        "--http2",
        "-w",
        "\n%{http_version} %{response_code}",
        "-H",
        f"Authorization: Bearer {gw.admin_key}",
        "-H",
        "Content-Type: application/json",
        "--data",
        json.dumps({"model": "chat", "messages": [{"role": "user", "content": "hi"}]}),
        gw.url + "/v1/chat/completions",
    )
    body, _, status = chat.stdout.rpartition("\n")
    assert status == "2 200", chat.stdout + chat.stderr
    assert json.loads(body)["choices"][0]["message"]["content"]
    stream = curl(
        gw,
        "--http2",
        "-N",
        "-w",
        "\n%{http_version}",
        "-H",
        f"Authorization: Bearer {gw.admin_key}",
        "-H",
        "Content-Type: application/json",
        "--data",
        json.dumps(
            {"model": "chat", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        ),
        gw.url + "/v1/chat/completions",
    )
    assert stream.stdout.endswith("\n2"), stream.stdout + stream.stderr
    assert "data: [DONE]" in stream.stdout and stream.stdout.count("data: {") >= 2
    # A client without HTTP/2 is served HTTP/1.1 on the same port.
    old = curl(gw, "--http1.1", "-o", "/dev/null", "-w", "%{http_version}", gw.url + "/health")
    assert old.stdout == "1.1"


@pytest.mark.parametrize("server", ["granian", "uvicorn"])
def test_tls_12_is_the_minimum(processes: Processes, sim: Sim, server: str) -> None:
    gw = start_https(processes, sim, server)
    _, version, _ = handshake(gw.port, client_context(max_version=ssl.TLSVersion.TLSv1_2))
    assert version == "TLSv1.2"
    with warnings.catch_warnings():  # TLS 1.1 is deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx = client_context(max_version=ssl.TLSVersion.TLSv1_1)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError) as refused:
        handshake(gw.port, ctx)
    # The server's refusal (rustls: a protocol_version alert; OpenSSL: the connection closed),
    # not this client's own (it would have found no protocol to offer).
    assert "NO_PROTOCOLS_AVAILABLE" not in str(refused.value), refused


def test_granian_offers_only_aead_suites_with_forward_secrecy(
    processes: Processes, sim: Sim
) -> None:
    gw = start_https(processes, sim, "granian")
    tls12 = ssl.TLSVersion.TLSv1_2
    for suite in (
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
    ):
        assert handshake(gw.port, client_context(max_version=tls12, ciphers=suite))[2] == suite
    with pytest.raises(ssl.SSLError):  # CBC, which rustls does not have
        handshake(gw.port, client_context(max_version=tls12, ciphers="ECDHE-ECDSA-AES256-SHA384"))


def test_tls_13_only_refuses_a_tls_12_client(processes: Processes, sim: Sim) -> None:
    gw = start_https(processes, sim, "uvicorn", {"min_version": "1.3"})
    assert handshake(gw.port, client_context())[1] == "TLSv1.3"
    with pytest.raises(ssl.SSLError):
        handshake(gw.port, client_context(max_version=ssl.TLSVersion.TLSv1_2))


def test_uvicorn_serves_only_the_configured_suites(processes: Processes, sim: Sim) -> None:
    gw = start_https(processes, sim, "uvicorn", {"ciphers": SEED_003_CIPHERS})
    tls12 = ssl.TLSVersion.TLSv1_2
    chosen = handshake(
        gw.port, client_context(max_version=tls12, ciphers="ECDHE-ECDSA-AES256-GCM-SHA384")
    )
    assert chosen[1:] == ("TLSv1.2", "ECDHE-ECDSA-AES256-GCM-SHA384")
    with pytest.raises(ssl.SSLError):  # a good suite, but not one of the list
        handshake(
            gw.port, client_context(max_version=tls12, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256")
        )
    version = curl(gw, "-o", "/dev/null", "-w", "%{http_version}", gw.url + "/health")
    assert version.stdout == "1.1"  # uvicorn: HTTP/1.1 only


@pytest.mark.parametrize("server", ["granian", "uvicorn"])
def test_a_rotated_certificate_is_served_without_a_restart(
    processes: Processes, sim: Sim, server: str
) -> None:
    gw = start_https(processes, sim, server, {"watch_interval": 0.3})
    first = handshake(gw.port, client_context())[0]
    half = gw.cert.read_bytes()
    # Half a rotation (a new certificate, the old key) is not loaded: the old pair serves on.
    write_pair(gw.cert, processes.root / "other-key.pem", "half")
    time.sleep(1.0)
    assert handshake(gw.port, client_context())[0] == first
    gw.cert.write_bytes(half)
    second = write_pair(gw.cert, gw.key, "second")
    deadline = time.monotonic() + 30
    failures = in_a_row = 0
    # Until the new one is all that is served: granian's old worker keeps accepting (with the
    # old pair) for a few seconds beside the new one before it is stopped.
    while in_a_row < 20:
        try:
            served = handshake(gw.port, client_context())[0]
        except OSError:
            failures += 1  # counted: none is expected
            served = b""
        in_a_row = in_a_row + 1 if served == second else 0
        if in_a_row:
            continue
        assert served in (first, b""), "neither the old nor the new certificate"
        assert time.monotonic() < deadline, gw.output()
        time.sleep(0.1)
    assert failures == 0, gw.output()
    assert gw.proc.poll() is None  # the same process, never restarted
    ok = curl(gw, "-o", "/dev/null", "-w", "%{response_code}", gw.url + "/health")
    assert ok.stdout == "200"
    assert "certificate" in gw.output() and "changed" in gw.output()


def test_the_configuration_names_real_suites_and_fits_the_server(tmp_path: Path) -> None:
    base = {"models": {"m": {"deployments": [{"url": "http://a:1"}]}}}
    tls = {"cert_file": "c.pem", "key_file": "k.pem", "ciphers": SEED_003_CIPHERS}
    settings = parse_settings({**base, "server": {"tls": tls}}, {}, base_dir=tmp_path)
    assert settings.server.tls is not None
    assert settings.server.tls.cert_file == str(tmp_path / "c.pem")
    assert settings.server.tls.ciphers[2] == "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"
    with pytest.raises(ConfigError) as caught:
        parse_settings({**base, "server": {"server": "granian", "tls": tls}}, {})
    assert "granian (rustls) serves a fixed set of suites" in caught.value.problems[0]
    bad = {**tls, "ciphers": ["TLS_RSA_WITH_RC4_128_SHA"]}
    with pytest.raises(ConfigError) as caught:
        parse_settings({**base, "server": {"tls": bad}}, {})
    assert "TLS_RSA_WITH_RC4_128_SHA: not a TLS 1.2 ECDHE AEAD suite" in caught.value.problems[0]
    assert os.path.basename(settings.server.tls.key_file) == "k.pem"
