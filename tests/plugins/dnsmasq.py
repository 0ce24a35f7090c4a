"""A real DNS server for discovery tests: Debian's ``dnsmasq``, unprivileged, on a free
loopback port, answering only from its own records (no upstream, no /etc/hosts).

A/AAAA records come from an ``--addn-hosts`` file that dnsmasq re-reads on SIGHUP; SRV
records are command-line options, so changing them restarts it on the same port.
"""

from __future__ import annotations

import getpass
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"


def _free_udp_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (dnsmasq listens on both: a port free
    for UDP only may be some TCP connection's own, from the same ephemeral range)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


class Dnsmasq:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_udp_port()
        self.hosts = root / "hosts"
        self.hosts.write_text("")
        self.log = root / "dnsmasq.log"
        self.srv: list[tuple[str, str, int]] = []  # (service name, target, port)
        self.records: dict[str, list[str]] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.reads = 0  # "read <hosts>" lines expected in the log so far

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        args = [
            DNSMASQ,
            "--no-daemon",
            f"--port={self.port}",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            f"--addn-hosts={self.hosts}",
            "--pid-file=",
            f"--user={getpass.getuser()}",  # never drop to nobody: it could not read the file
            "--cache-size=0",
            "--log-queries",
        ]
        args += [f"--srv-host={name},{target},{port}" for name, target, port in self.srv]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        self.reads += 1
        self._wait_read()

    def _wait_read(self) -> None:
        """Until dnsmasq has (re)read the hosts file as often as asked."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"dnsmasq exited:\n{self.log.read_text()}")
            if self.log.read_text(errors="replace").count(f"read {self.hosts}") >= self.reads:
                return
            time.sleep(0.02)
        raise RuntimeError(f"dnsmasq did not read {self.hosts}:\n{self.log.read_text()}")

    def set_addresses(self, records: dict[str, list[str]]) -> None:
        """Replace every A/AAAA record (name → addresses); dnsmasq re-reads them on SIGHUP."""
        self.records = records
        lines = [f"{a} {name}" for name, addresses in records.items() for a in addresses]
        self.hosts.write_text("".join(line + "\n" for line in lines))
        if self.proc is not None:
            self.proc.send_signal(signal.SIGHUP)
            self.reads += 1
            self._wait_read()

    def set_services(self, records: list[tuple[str, str, int]]) -> None:
        """Replace every SRV record: dnsmasq takes them on its command line, so it restarts."""
        self.srv = records
        if self.proc is not None:
            self.stop()
            self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[Dnsmasq]:
    if not Path(DNSMASQ).exists():
        pytest.fail("dnsmasq is not installed: scripts/bootstrap.sh test installs it")
    root = tmp_path / "dns"
    root.mkdir()
    server = Dnsmasq(root)
    server.start()
    yield server
    server.stop()
