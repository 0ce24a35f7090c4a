"""Running wrk for one benchmark cell and reading its report.

wrk (Debian's ``wrk``) is the load generator because it is C with an event loop per thread: it
costs the 2-core machine far less CPU per request than any Python client would, so more of the
machine goes to the server being measured. The POST body and headers come from a Lua script.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

CHAT_BODY = {
    "model": "bench-model",
    "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
    "max_tokens": 16,
}

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}
_LATENCY = re.compile(r"^\s*(50|75|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", re.MULTILINE)
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_TOTAL = re.compile(r"^\s*(\d+) requests in", re.MULTILINE)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", re.MULTILINE
)


@dataclass(frozen=True)
class Cell:
    """One wrk run: throughput, latency percentiles in ms, failures, and the server's RSS."""

    concurrency: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    requests: int
    errors: int  # non-2xx responses plus socket errors (connect, read, write, timeout)
    rss_mb: float = 0.0

    def as_dict(self) -> dict[str, float | int | None]:
        """For JSON, which has no NaN: a latency that was not measured is null."""
        return {k: None if v != v else v for k, v in asdict(self).items()}


def ensure_wrk() -> str:
    """Path to wrk; installs Debian's package when it is missing and we may (root)."""
    found = shutil.which("wrk")
    if found:
        return found
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    for step in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "wrk"]):
        subprocess.run([*sudo, *step], check=False, stdout=subprocess.DEVNULL)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk is missing and could not be installed: apt-get install wrk")
    return found


def write_script(path: Path, headers: Mapping[str, str]) -> Path:
    """A wrk Lua script that POSTs the chat body with ``headers``."""

    def lua(text: str) -> str:
        return json.dumps(text)  # a JSON string literal is a valid Lua string literal here

    lines = ['wrk.method = "POST"', f"wrk.body = {lua(json.dumps(CHAT_BODY))}"]
    lines.append('wrk.headers["Content-Type"] = "application/json"')
    lines += [f"wrk.headers[{lua(k)}] = {lua(v)}" for k, v in headers.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def parse(output: str, concurrency: int) -> Cell:
    rps = _RPS.search(output)
    if rps is None:
        raise ValueError(f"no Requests/sec in wrk output:\n{output}")
    total = _TOTAL.search(output)
    latency = {p: float(v) * _UNITS[u] for p, v, u in _LATENCY.findall(output)}
    if total is None or int(total.group(1)) == 0:
        latency = {}  # wrk prints 0.00us percentiles when nothing completed: not a latency
    non_2xx = _NON_2XX.search(output)
    sockets = _SOCKET.search(output)
    errors = int(non_2xx.group(1)) if non_2xx else 0
    if sockets:
        errors += sum(int(n) for n in sockets.groups())
    return Cell(
        concurrency=concurrency,
        rps=float(rps.group(1)),
        p50_ms=latency.get("50", float("nan")),
        p90_ms=latency.get("90", float("nan")),
        p99_ms=latency.get("99", float("nan")),
        requests=int(total.group(1)) if total else 0,
        errors=errors,
    )


def run(
    wrk: str, url: str, script: Path, concurrency: int, seconds: float, timeout: float = 10.0
) -> Cell:
    """One wrk run: ``-c concurrency`` connections, one thread at concurrency 1, else two."""
    threads = 1 if concurrency == 1 else 2
    argv = [
        wrk,
        f"-t{threads}",
        f"-c{concurrency}",
        f"-d{max(1, round(seconds))}s",
        f"--timeout={max(1, round(timeout))}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + timeout + 30)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse(done.stdout, concurrency)
