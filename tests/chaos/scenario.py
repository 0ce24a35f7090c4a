"""The chaos scenario: steady load from OpenAI SDK clients on a two-replica model while one
replica is killed, hung (SIGSTOP) and made to answer 500s, each then restored.

Shared by the bounded CI test (``tests/chaos/test_chaos.py``: seconds per phase) and the long
form (``bench/chaos.py``: 40 clients, 20 s phases). Each replica is a ``swarmgate sim``
process of its own on a fixed port, so that it can be stopped, continued, killed and started
again (as another profile) where the gateway expects it.
"""

from __future__ import annotations

import signal
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import yaml

from tests.plugins.processes import SWARMGATE, Gateway, Process, free_port, spawn, wait_healthy

MODEL = "m"
# Fast enough that the gateway, not the simulator, bounds the throughput of one replica.
PROFILE: dict[str, Any] = {
    "ttft_ms": 10,
    "tokens_per_second": 400,
    "max_tokens_default": 4,
    "slots": 16,
}
# The watch settings of the bounded form: a probe a second, every quarter second while in
# doubt; the circuit at seed 004's threshold, open for a second.
RESILIENCE: dict[str, Any] = {
    "health_check": {
        "interval": 1.0,
        "unhealthy_interval": 0.25,
        "timeout": 0.25,
        "unhealthy_threshold": 2,
        "healthy_threshold": 2,
    },
    "circuit_breaker": {"threshold": 5, "open_seconds": 1.0},
}


@dataclass
class Replica:
    """One simulated deployment on a port of its own."""

    root: Path
    name: str
    port: int = field(default_factory=free_port)
    process: Process | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, failures: dict[str, Any] | None = None) -> None:
        model = {**PROFILE, **({"failures": failures} if failures else {})}
        server = {"name": self.name, "host": "127.0.0.1", "port": self.port}
        profile = self.root / f"{self.name}-{self.starts}.yaml"
        profile.write_text(yaml.safe_dump({"servers": [{**server, "models": {MODEL: model}}]}))
        log = self.root / f"{self.name}-{self.starts}.log"
        self.starts += 1
        proc = spawn([*SWARMGATE, "sim", "--config", str(profile)], log)
        self.process = Process(proc, log, self.url)
        wait_healthy(self.process)

    def kill(self) -> None:
        if self.process is not None:
            self.process.stop(signal.SIGKILL)

    def hang(self) -> None:
        assert self.process is not None
        self.process.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None:
            self.resume()
            self.process.stop()


def gateway_config(replicas: list[Replica], **model: Any) -> dict[str, Any]:
    deployments = [{"url": r.url, "name": r.name} for r in replicas]
    return {
        "models": {MODEL: {"deployments": deployments, **RESILIENCE, **model}},
        "ledger": {"enabled": False},
        # One idle bound for every wait before a first byte: how soon a request stranded on
        # a deployment its probes find hung is cut off and failed over.
        "timeouts": {"connect": 1.0, "first_byte": 20.0, "idle": 0.5, "total": 30.0},
    }


@dataclass
class Result:
    at: float
    ok: bool
    deployment: str = ""
    error: str = ""
    stream: bool = False
    cut: bool = False  # a stream that started, then ended with the gateway's SSE error event


class Load:
    """``clients`` threads, each with its own OpenAI client, sending non-streamed chats one
    after the other until stopped; ``streams`` more threads sending streamed ones."""

    def __init__(self, gateway: Gateway, clients: int, streams: int = 0) -> None:
        self.gateway = gateway
        self.clients = clients
        self.results: list[Result] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._client, daemon=True) for _ in range(clients)
        ] + [threading.Thread(target=self._streamer, daemon=True) for _ in range(streams)]

    def _openai(self) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.gateway.url + "/v1",
            api_key=self.gateway.admin_key,
            max_retries=0,  # a failure must show, not be retried by the SDK
            timeout=25.0,
        )

    def _streamer(self) -> None:
        """Streamed chats, long enough (40 tokens) that a fault can cut one mid-way."""
        client = self._openai()
        messages: Any = [{"role": "user", "content": "hello"}]
        with client:
            while not self._stop.is_set():
                chunks = 0
                try:
                    stream = client.chat.completions.create(
                        model=MODEL, messages=messages, max_tokens=40, stream=True
                    )
                    for _ in stream:
                        chunks += 1
                    result = Result(time.monotonic(), True, stream=True)
                except Exception as exc:
                    # After a chunk, the SDK raises APIError for the gateway's error event.
                    cut = chunks > 0 and isinstance(exc, openai.APIError)
                    error = f"{type(exc).__name__} after {chunks} chunks: {exc}"
                    result = Result(time.monotonic(), False, error=error, stream=True, cut=cut)
                with self._lock:
                    self.results.append(result)

    def _client(self) -> None:
        client = self._openai()
        messages: Any = [{"role": "user", "content": "hello"}]
        with client:
            while not self._stop.is_set():
                try:
                    raw = client.chat.completions.with_raw_response.create(
                        model=MODEL, messages=messages, max_tokens=4
                    )
                    raw.parse()
                    deployment = raw.headers["x-swarmgate-deployment"]
                    result = Result(time.monotonic(), True, deployment)
                except Exception as exc:  # any failure is a result, never a dead client
                    error = f"{type(exc).__name__}: {exc}"
                    result = Result(time.monotonic(), False, error=error)
                with self._lock:
                    self.results.append(result)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def since(self, start: float, end: float | None = None) -> list[Result]:
        """The non-streamed requests that ended in [start, end)."""
        with self._lock:
            return [
                r
                for r in self.results
                if not r.stream and r.at >= start and (end is None or r.at < end)
            ]

    def streams(self) -> list[Result]:
        with self._lock:
            return [r for r in self.results if r.stream]

    def first_served_by(self, deployment: str, since: float, timeout: float) -> float | None:
        """Seconds from ``since`` until ``deployment`` answered a request again."""
        deadline = since + timeout
        while time.monotonic() < deadline:
            for r in self.since(since):
                if r.ok and r.deployment == deployment:
                    return r.at - since
            time.sleep(0.05)
        return None


def metric(gateway: Gateway, name: str, **labels: str) -> float:
    """One sample of the gateway's /metrics (0 when absent)."""
    with urllib.request.urlopen(gateway.url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            series, _, value = line.rpartition(" ")
            inner = series[len(name) :].strip("{}")
            if ",".join(sorted(inner.split(","))) == want or (not want and not inner):
                return float(value)
    return 0.0


@dataclass
class Phase:
    name: str
    seconds: float
    requests: int
    failures: int
    throughput: float  # completed requests per second
    served: Counter[str]
    errors: list[str]

    def row(self) -> str:
        shares = ", ".join(f"{d}: {n}" for d, n in sorted(self.served.items()))
        return (
            f"{self.name:<10} {self.seconds:5.1f}s {self.requests:6d} req "
            f"{self.throughput:7.1f}/s failed {self.failures:4d}  ({shares})"
        )


def phase(load: Load, name: str, start: float, end: float) -> Phase:
    results = load.since(start, end)
    failed = [r for r in results if not r.ok]
    seconds = end - start
    return Phase(
        name,
        seconds,
        len(results),
        len(failed),
        sum(r.ok for r in results) / seconds,
        Counter(r.deployment for r in results if r.ok),
        [r.error for r in failed][:5],
    )
