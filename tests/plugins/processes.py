"""Factories for real ``swarmgate sim`` and ``swarmgate serve`` processes on free ports.

Each factory writes its YAML into the test's tmp dir, starts the command as a subprocess with
its output in a log file (tests read it, e.g. to prove no secret is ever logged), waits for
``/health`` and stops everything at teardown.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

SWARMGATE = [sys.executable, "-m", "swarmgate.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Process:
    proc: subprocess.Popen[bytes]
    log: Path
    url: str

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@dataclass
class Gateway(Process):
    admin_key: str = ""
    config_path: Path = field(default_factory=Path)
    env: dict[str, str] = field(default_factory=dict)  # what it was started with (its secrets)


@dataclass
class Sim(Process):
    urls: dict[str, str] = field(default_factory=dict)


def wait_healthy(process: Process, path: str = "/health", timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.proc.poll() is not None:
            raise RuntimeError(
                f"process exited with {process.proc.returncode}:\n{process.output()}"
            )
        try:
            with urllib.request.urlopen(process.url + path, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    process.stop(signal.SIGKILL)
    raise RuntimeError(f"not healthy after {timeout}s:\n{process.output()}")


def spawn(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SWARMGATE_")}
    full_env.update(env or {})
    with log.open("wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=full_env)


def new_admin_key() -> str:
    return "sk-sg-" + secrets.token_hex(32)


@dataclass
class Processes:
    """Starts sims and gateways in one directory; ``stop_all`` stops them, newest first."""

    root: Path
    started: list[Process] = field(default_factory=list)

    def sim(
        self, models: dict[str, dict[str, Any]], *, replicas: int = 1, testing: bool = True
    ) -> Sim:
        n = len(self.started)
        servers, urls = [], {}
        for i in range(replicas):
            port = free_port()
            name = f"sim{n}-{i}"
            servers.append({"name": name, "host": "127.0.0.1", "port": port, "models": models})
            urls[name] = f"http://127.0.0.1:{port}"
        profile = self.root / f"sim{n}.yaml"
        profile.write_text(yaml.safe_dump({"servers": servers}))
        log = self.root / f"sim{n}.log"
        args = [*SWARMGATE, "sim", "--config", str(profile)] + (["--testing"] if testing else [])
        sim = Sim(spawn(args, log), log, next(iter(urls.values())), urls)
        self.started.append(sim)
        for url in urls.values():
            wait_healthy(Sim(sim.proc, log, url))
        return sim

    def gateway(
        self,
        config: dict[str, Any],
        env: dict[str, str] | None = None,
        *,
        args: tuple[str, ...] = (),
        with_admin_key: bool = True,
    ) -> Gateway:
        """``swarmgate serve`` on a free port, by default with a new ``SWARMGATE_ADMIN_KEY``
        and its own server secret; unless ``config`` names a store, its own SQLite file."""
        n = len(self.started)
        port = free_port()
        config = dict(config)
        config["server"] = {**config.get("server", {}), "host": "127.0.0.1", "port": port}
        config.setdefault("store", {"url": f"sqlite+aiosqlite:///{self.root / f'gw{n}.db'}"})
        config["audit"] = {
            "spool_path": str(self.root / f"gw{n}-audit.spool"),
            **config.get("audit", {}),
        }
        path = self.root / f"gateway{n}.yaml"
        path.write_text(yaml.safe_dump(config))
        full_env = {"SWARMGATE_AUTH__SECRET": "srv-" + secrets.token_hex(20)}
        if with_admin_key:
            full_env["SWARMGATE_ADMIN_KEY"] = new_admin_key()
        full_env.update(env or {})
        log = self.root / f"gateway{n}.log"
        proc = spawn([*SWARMGATE, "serve", "--config", str(path), *args], log, full_env)
        url = f"http://127.0.0.1:{port}"
        gw = Gateway(proc, log, url, full_env.get("SWARMGATE_ADMIN_KEY", ""), path, full_env)
        self.started.append(gw)
        wait_healthy(gw)
        return gw

    def stop_all(self) -> None:
        for process in reversed(self.started):
            process.stop()


@pytest.fixture
def sim_factory(tmp_path: Path) -> Iterator[Callable[..., Sim]]:
    processes = Processes(tmp_path)
    yield processes.sim
    processes.stop_all()


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    processes = Processes(tmp_path / "gateways")
    processes.root.mkdir()
    yield processes.gateway
    processes.stop_all()


Node = Gateway  # a gateway process and the environment it was started with (its secrets)


class Fleet(Processes):
    """Sims and gateways for a module (the identity-and-access tests' ``fleet``): audit
    records flushed every 0.2 s, sims not in testing mode, and a CLI that runs with only the
    given SWARMGATE_* variables."""

    def sim(
        self, models: dict[str, dict[str, Any]], *, replicas: int = 1, testing: bool = False
    ) -> Sim:
        return super().sim(models, replicas=replicas, testing=testing)

    def gateway(
        self,
        config: dict[str, Any],
        env: dict[str, str] | None = None,
        *,
        args: tuple[str, ...] = (),
        with_admin_key: bool = True,
    ) -> Gateway:
        config = {**config, "audit": {"flush_interval": 0.2, **config.get("audit", {})}}
        return super().gateway(config, env, args=args, with_admin_key=with_admin_key)

    def cli(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``python -m swarmgate.cli <args>`` with only ``env``'s SWARMGATE_* variables."""
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("SWARMGATE_")}
        full_env.update(env or {})
        return subprocess.run(
            [*SWARMGATE, *args], capture_output=True, text=True, env=full_env, timeout=60
        )


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    processes = Fleet(tmp_path_factory.mktemp("auth-e2e"))
    yield processes
    processes.stop_all()
