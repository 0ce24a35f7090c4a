"""HTTPS for ``swarmgate serve``: ``server.tls`` as each ASGI server takes it, and certificate
rotation without a restart.

- uvicorn builds its ``ssl.SSLContext`` through ``uvicorn_context`` (its
  ``ssl_context_factory``), in each worker: TLS ``min_version``, the configured TLS 1.2 suites,
  ALPN ``http/1.1`` (uvicorn speaks no HTTP/2). A rotated pair is loaded into that same
  context (``load_cert_chain`` again): new handshakes get the new certificate, connections
  already open keep theirs, nothing restarts.
- granian takes the files' paths; its workers read them when they start. A rotated pair makes
  the serving process send itself ``SIGHUP``, on which granian starts new workers and stops the
  old ones gracefully (each finishing its requests): the process, its port and its listening
  socket stay, as does service.

Either way a pair is loaded only once it is valid (the certificate matches the key): a
rotation caught half-written is retried at the next look, and the old pair keeps serving.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from swarmgate.config import TLS, TLS12_SUITES

log = logging.getLogger("swarmgate.tls")
VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def fingerprint(tls: TLS) -> str | None:
    """A digest of both files' bytes; None while one cannot be read."""
    digest = hashlib.sha256()
    try:
        for path in (tls.cert_file, tls.key_file):
            digest.update(Path(path).read_bytes())
    except OSError:
        return None
    return digest.hexdigest()


def valid_pair(tls: TLS) -> bool:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError):
        return False
    return True


class CertWatcher:
    """Looks at the pair every ``watch_interval`` seconds (a daemon thread: it never holds a
    process up); calls ``on_change`` once per new valid pair."""

    def __init__(self, tls: TLS, on_change: Callable[[], None]) -> None:
        self.tls = tls
        self.on_change = on_change
        self._seen = fingerprint(tls)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="swarmgate-tls", daemon=True)

    def start(self) -> CertWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def check(self) -> bool:
        """One look: True when a new valid pair was handed to ``on_change``."""
        current = fingerprint(self.tls)
        if current is None or current == self._seen or not valid_pair(self.tls):
            return False
        self._seen = current
        log.info("certificate %s changed: serving the new one", self.tls.cert_file)
        self.on_change()
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.tls.watch_interval):
            try:
                self.check()
            except Exception:  # a failed reload must not end the watching
                log.exception("reloading the certificate %s failed", self.tls.cert_file)


def server_context(tls: TLS) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = VERSIONS[tls.min_version]
    if tls.ciphers:
        # TLS 1.2 and below only: Python's ssl module leaves TLS 1.3's suites at OpenSSL's.
        ctx.set_ciphers(":".join(TLS12_SUITES[name] for name in tls.ciphers))
    ctx.set_alpn_protocols(["http/1.1"])
    ctx.load_cert_chain(tls.cert_file, tls.key_file)
    return ctx


def uvicorn_context(
    tls: TLS, _config: Any, _default: Callable[[], ssl.SSLContext]
) -> ssl.SSLContext:
    """uvicorn's ``ssl_context_factory`` (with ``functools.partial`` over ``tls``: it must
    pickle, for workers)."""
    ctx = server_context(tls)
    if tls.watch:
        CertWatcher(tls, lambda: ctx.load_cert_chain(tls.cert_file, tls.key_file)).start()
    return ctx


def granian_options(tls: TLS) -> dict[str, Any]:
    from granian.constants import SSLProtocols

    protocol = SSLProtocols.tls12 if tls.min_version == "1.2" else SSLProtocols.tls13
    return {
        "ssl_cert": Path(tls.cert_file),
        "ssl_key": Path(tls.key_file),
        "ssl_protocol_min": protocol,
    }


def watch_for_granian(tls: TLS) -> CertWatcher | None:
    """In granian's main process (``serve``'s own): SIGHUP to itself on a new pair."""
    if not tls.watch:
        return None
    pid = os.getpid()

    def respawn() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGHUP)

    return CertWatcher(tls, respawn).start()
