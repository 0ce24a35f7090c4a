"""Starting, watching and always stopping the servers a benchmark runs against.

Each server runs in its own session (``start_new_session``), so one ``killpg`` ends its whole
tree (uvicorn and granian fork workers, nginx forks its own) and its memory can be summed over
the session. ``running`` is a context manager: whatever happens in the body, the tree is gone
when it exits.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "bench" / ".work"


class BenchError(Exception):
    """A server did not start, or a tool the benchmark needs is missing."""


@dataclass(frozen=True)
class Service:
    """How to run one server and how to tell that it is up."""

    name: str
    argv: Sequence[str]
    port: int
    ready_path: str = "/health"  # GET must answer 200; "" means "the port accepts connections"
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path = REPO
    start_timeout: float = 60.0


@dataclass
class Running:
    service: Service
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.service.port}"

    def rss_bytes(self) -> int:
        return session_rss_bytes(self.process.pid)

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


def raise_open_files_limit() -> int:
    """Raise the soft limit on open files to the hard limit; children inherit it."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        # As the servers do: connections of the previous row in TIME_WAIT must not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def session_rss_bytes(leader: int) -> int:
    """Sum of VmRSS over every live process in ``leader``'s session (the server's whole tree)."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            # Fields after the parenthesised command: state ppid pgrp session ...
            sid = int(stat[stat.rindex(")") + 2 :].split()[3])
            if sid != leader:
                continue
            for line in Path(entry.path, "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except (OSError, ValueError):
            continue  # the process ended while we looked
    return total


def _answers(service: Service) -> bool:
    if not service.ready_path:
        with socket.socket() as sock:
            sock.settimeout(1.0)
            return sock.connect_ex(("127.0.0.1", service.port)) == 0
    url = f"http://127.0.0.1:{service.port}{service.ready_path}"
    try:
        with urllib.request.urlopen(url, timeout=2.0) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _stop(process: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(grace)
    # Workers can outlive their leader; SIGKILL whatever is left of the session.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(5.0)


@contextlib.contextmanager
def running(service: Service) -> Iterator[Running]:
    if not port_is_free(service.port):
        raise BenchError(f"{service.name}: port {service.port} on 127.0.0.1 is already in use")
    WORK.mkdir(parents=True, exist_ok=True)
    log = WORK / f"{service.name}.log"
    env = {**os.environ, **service.env}
    with log.open("wb") as out:
        process = subprocess.Popen(
            list(service.argv),
            cwd=service.cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    handle = Running(service, process, log)
    try:
        deadline = time.monotonic() + service.start_timeout
        while not _answers(service):
            if process.poll() is not None:
                why = f"exited with status {process.returncode}"
                raise BenchError(f"{service.name} {why}:\n{handle.log_tail()}")
            if time.monotonic() > deadline:
                why = f"not ready after {service.start_timeout:.0f} s"
                raise BenchError(f"{service.name} {why}:\n{handle.log_tail()}")
            time.sleep(0.1)
        yield handle
    finally:
        _stop(process)
