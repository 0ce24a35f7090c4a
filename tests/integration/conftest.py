"""llama.cpp's own HTTP server (``xllamacpp``, from PyPI) serving the tiny GGUF of gguf_factory.

``xllamacpp.Server(params)`` runs llama-server's HTTP loop on native threads inside the calling
process. It runs in a child process instead, so that a crash in native code fails the tests that
use it rather than killing pytest. The child binds port 0, prints the address llama.cpp actually
listens on, then waits on its stdin: closing the pipe (or pytest dying) ends it.
"""

from __future__ import annotations

import selectors
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.gguf_factory import MODEL_ALIAS, write_tiny_llama_gguf

START_TIMEOUT = 30.0

# argv: model path, alias. One thread each: the model is tiny, and spinning worker threads would
# only take CPU from the gateway and pytest on a 2-core machine.
_RUNNER = """
import sys
import xllamacpp

params = xllamacpp.CommonParams()
params.model.path = sys.argv[1]
params.model_alias = {sys.argv[2]}
params.hostnames = ["127.0.0.1"]
params.port = 0
params.n_ctx = 512
params.n_parallel = 2
params.n_predict = 64
params.cpuparams.n_threads = 1
params.cpuparams_batch.n_threads = 1
params.warmup = False
params.endpoint_metrics = True
server = xllamacpp.Server(params)
print(server.listening_address, flush=True)
sys.stdin.read()
"""


def _read_address(proc: subprocess.Popen[str], log: Path) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if selector.select(START_TIMEOUT):
            line = proc.stdout.readline().strip()
            if line.startswith("http://"):
                return line
    raise RuntimeError(f"llama.cpp server did not start:\n{log.read_text(errors='replace')}")


def _wait_healthy(url: str, proc: subprocess.Popen[str], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"llama.cpp server not healthy:\n{log.read_text(errors='replace')}")


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.stdin is not None:
        proc.stdin.close()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL ("http://127.0.0.1:PORT") of a llama.cpp server serving "tiny-llama"."""
    directory = tmp_path_factory.mktemp("llama")
    model = write_tiny_llama_gguf(directory / "tiny-llama.gguf")
    log = directory / "llama-server.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", _RUNNER, str(model), MODEL_ALIAS],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    try:
        url = _read_address(proc, log)
        _wait_healthy(url, proc, log)
        yield url
    finally:
        _stop(proc)
