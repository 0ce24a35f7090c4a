"""Model downloads end to end: real gateways whose ``native.ollama_url`` is a real simulator
(its ``POST /api/pull``), a stalling Ollama written here for shutdown, and two replicas on one
real PostgreSQL."""

from __future__ import annotations

import signal
import sqlite3
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.api.e2e import FAST, Processes, assert_clean_log, model
from tests.api.test_native import assert_native_error
from tests.auth.e2e import Reply, call, create_key, server_secret, wait_for
from tests.plugins.processes import Gateway, Sim, new_admin_key

DOWNLOAD = "/api/v1/models/download"
SIM_LAYER = 4 * 1024 * 1024  # sim/pull.py's SIZE


@pytest.fixture(scope="module")
def sim(procs: Processes) -> Sim:
    return procs.sim({"chat": FAST})


@pytest.fixture(scope="module")
def gw(procs: Processes, sim: Sim) -> Iterator[Gateway]:
    gateway = procs.gateway({"models": {"chat": model(sim.url)}, "native": {"ollama_url": sim.url}})
    yield gateway
    assert_clean_log(gateway)


def start(gw: Gateway, body: Any, key: str | None = None) -> Reply:
    return call(gw.url + DOWNLOAD, "POST", key=key or gw.admin_key, json_body=body)


def job(gw: Gateway, job_id: str, key: str | None = None) -> Reply:
    return call(f"{gw.url}{DOWNLOAD}/{job_id}", key=key or gw.admin_key)


def finished(gw: Gateway, job_id: str, timeout: float = 10) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def ended() -> bool:
        reply = job(gw, job_id)
        assert reply.status == 200, reply.text
        seen.update(reply.body)
        return seen["status"] in ("done", "failed")

    wait_for(ended, timeout, what=f"download {job_id} to end")
    return seen


def test_a_download_is_accepted_then_runs_to_done(gw: Gateway) -> None:
    reply = start(gw, {"model_name": "llama3.2:1b", "priority": "high"})
    assert reply.status == 202, reply.text
    accepted = reply.body
    assert accepted["status"] == "queued" and accepted["id"].startswith("dl_")
    assert reply.headers["location"] == f"{DOWNLOAD}/{accepted['id']}"
    assert (accepted["model_name"], accepted["source"], accepted["priority"]) == (
        "llama3.2:1b",
        "ollama",
        "high",
    )
    done = finished(gw, accepted["id"])
    assert done["status"] == "done" and done["error"] is None, done
    progress = done["progress"]
    assert progress["total_bytes"] == progress["completed_bytes"] == SIM_LAYER
    assert progress["percent"] == 100 and progress["status"] == "success"
    assert done["requested_by"] and done["created_at"] <= done["updated_at"]


def test_hugging_face_models_are_pulled_as_hf_co_names(gw: Gateway) -> None:
    reply = start(gw, {"model_name": "bartowski/Llama-3.2-1B-GGUF", "source": "huggingface"})
    assert reply.status == 202, reply.text
    assert reply.body["pull_name"] == "hf.co/bartowski/Llama-3.2-1B-GGUF"
    assert finished(gw, reply.body["id"])["status"] == "done"


def test_an_unknown_model_fails_with_ollamas_error(gw: Gateway) -> None:
    reply = start(gw, {"model_name": "missing-model"})
    assert reply.status == 202, reply.text
    failed = finished(gw, reply.body["id"])
    assert failed["status"] == "failed"
    assert "file does not exist" in failed["error"], failed


def test_cluster_write_is_needed_to_start_or_read_a_download(gw: Gateway) -> None:
    accepted = start(gw, {"model_name": "llama3.2:1b"}).body["id"]
    _, user = create_key(gw, role="user")
    assert_native_error(start(gw, {"model_name": "x"}, key=user), 403, "FORBIDDEN")
    assert_native_error(job(gw, accepted, key=user), 403, "FORBIDDEN")
    assert_native_error(
        call(gw.url + DOWNLOAD, "POST", json_body={"model_name": "x"}), 401, "UNAUTHORIZED"
    )
    _, operator = create_key(gw, role="user", scopes=["cluster:write"])
    reply = start(gw, {"model_name": "qwen2.5:0.5b", "priority": "low"}, key=operator)
    assert reply.status == 202, reply.text
    assert job(gw, reply.body["id"], key=operator).status == 200


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({}, "INVALID_REQUEST"),
        ({"model_name": 7}, "INVALID_REQUEST"),
        ({"model_name": ""}, "INVALID_REQUEST"),
        ({"model_name": "a b"}, "INVALID_REQUEST"),
        ({"model_name": "m" * 201}, "INVALID_REQUEST"),
        ({"model_name": "m", "source": "s3"}, "INVALID_REQUEST"),
        ({"model_name": "m", "priority": "urgent"}, "INVALID_REQUEST"),
        ([], "INVALID_JSON"),
    ],
)
def test_bad_requests_are_400s_in_seed_001s_format(gw: Gateway, body: Any, code: str) -> None:
    assert_native_error(start(gw, body), 400, code)


def test_the_job_route_is_not_a_model_route(gw: Gateway) -> None:
    unknown = assert_native_error(job(gw, "dl_" + "0" * 24), 404, "NOT_FOUND")
    assert "download" in unknown["message"] and "model" not in unknown["message"]
    assert_native_error(job(gw, "not-an-id"), 404, "NOT_FOUND")
    listing = call(gw.url + DOWNLOAD, key=gw.admin_key)
    assert_native_error(listing, 405, "METHOD_NOT_ALLOWED")
    assert listing.headers["allow"] == "POST"


def test_without_an_ollama_server_downloads_are_refused(procs: Processes, sim: Sim) -> None:
    plain = procs.gateway({"models": {"chat": model(sim.url)}})
    assert_native_error(start(plain, {"model_name": "m"}), 503, "SERVICE_UNAVAILABLE")


class StallingOllama:
    """Answers ``/api/pull`` with one progress line, then says nothing more until closed."""

    def __init__(self) -> None:
        released = self.released = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["content-length"]))
                self.send_response(200)
                self.send_header("content-type", "application/x-ndjson")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                data = b'{"status":"pulling manifest"}\n'
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
                released.wait(60)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


def test_shutdown_marks_running_and_queued_jobs_failed(
    procs: Processes, sim: Sim, tmp_path: Any
) -> None:
    ollama = StallingOllama()
    db = tmp_path / "stall.db"
    try:
        config = {
            "models": {"chat": model(sim.url)},
            "native": {"ollama_url": ollama.url, "download_concurrency": 1},
            "store": {"url": f"sqlite:///{db}"},
        }
        stalled = procs.gateway(config)
        running = start(stalled, {"model_name": "big"}).body["id"]
        waiting = start(stalled, {"model_name": "bigger"}).body["id"]
        wait_for(
            lambda: job(stalled, running).body["progress"]["status"] == "pulling manifest",
            10,
            what="the pull to start",
        )
        assert job(stalled, waiting).body["status"] == "queued"
        # uvicorn re-raises the signal after its graceful shutdown (tests/api/test_shutdown.py).
        assert stalled.stop() in (0, -signal.SIGTERM)
        assert "Waiting for application shutdown" in stalled.output()
        assert_clean_log(stalled)
    finally:
        ollama.close()
    with sqlite3.connect(db) as conn:
        rows = dict(conn.execute("SELECT id, status || ': ' || error FROM model_downloads"))
    assert rows[running].startswith("failed: interrupted: the gateway shut down during")
    assert rows[waiting].startswith("failed: interrupted: the gateway shut down before")


@pytest.mark.postgres
def test_a_job_accepted_by_one_replica_is_read_by_the_other(
    procs: Processes, sim: Sim, postgres_url: str
) -> None:
    config = {
        "models": {"chat": model(sim.url)},
        "native": {"ollama_url": sim.url},
        "store": {"url": postgres_url},
    }
    env = {"SWARMGATE_AUTH__SECRET": server_secret(), "SWARMGATE_ADMIN_KEY": new_admin_key()}
    a = procs.gateway(config, env)
    b = procs.gateway(config, env)
    reply = start(a, {"model_name": "llama3.2:1b"})
    assert reply.status == 202, reply.text
    job_id = reply.body["id"]
    # B never ran it: only the shared store can tell B how it ended.
    done = finished(b, job_id)
    assert done["status"] == "done" and done["progress"]["completed_bytes"] == SIM_LAYER
    assert job(a, job_id).body == done
    failed = start(b, {"model_name": "missing-one"}).body["id"]
    assert "file does not exist" in finished(a, failed)["error"]
    for node in (a, b):
        assert_clean_log(node)
