"""Fleet management on real gateways and simulators: the cluster's status, workers added at run
time, drained under load, restarted and removed, a restart of the gateway, and the errors.

Inference goes through the official ``openai`` SDK; which deployment served a request is read
from its ``x-swarmgate-deployment`` header.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import openai
import pytest

from tests.auth.e2e import Reply, admin, assert_error, audit_records, call, create_key, wait_for
from tests.plugins.processes import SWARMGATE, Gateway, Sim

FAST: dict[str, Any] = {"ttft_ms": 1, "tokens_per_second": 2000, "max_tokens_default": 4}
# About a second a request: long enough to be caught in flight by a drain.
SLOW: dict[str, Any] = {"ttft_ms": 50, "tokens_per_second": 25, "max_tokens_default": 20}
MESSAGES: list[Any] = [{"role": "user", "content": "hello"}]


def name_of(url: str, model: str = "m") -> str:
    return f"{model}@{url.removeprefix('http://')}"


def config(*urls: str, **extra: Any) -> dict[str, Any]:
    return {
        "models": {"m": {"deployments": [{"url": u} for u in urls]}},
        "limits": {"enabled": False},
        "audit": {"flush_interval": 0.2},
        **extra,
    }


def sdk(gw: Gateway, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key or gw.admin_key, max_retries=0)


def served_by(client: openai.OpenAI, *, stream: bool = False) -> str:
    """One chat completion; the name of the deployment that answered it."""
    raw = client.chat.completions.with_raw_response.create(
        model="m", messages=MESSAGES, stream=stream
    )
    answer = raw.parse()
    if stream:
        chunks = list(answer)  # type: ignore[call-overload]
        assert chunks, "an empty stream"
    else:
        assert answer.choices[0].message.content  # type: ignore[union-attr]
    return raw.headers["x-swarmgate-deployment"]


def workers(gw: Gateway, key: str | None = None) -> dict[str, dict[str, Any]]:
    reply = call(gw.url + "/api/v1/workers", key=key or gw.admin_key)
    assert reply.status == 200, reply.text
    assert reply.body["object"] == "list"
    return {w["id"]: w for w in reply.body["data"]}


def worker_path(name: str, action: str = "") -> str:
    return f"/api/v1/workers/{quote(name, safe='')}" + (f"/{action}" if action else "")


def add(gw: Gateway, body: dict[str, Any]) -> Reply:
    return admin(gw, "POST", "/api/v1/workers", body)


def test_status_routes_and_their_errors(
    sim_factory: Callable[..., Sim], gateway_factory: Callable[..., Gateway]
) -> None:
    sim = sim_factory({"m": FAST}, replicas=2)
    a, b = sim.urls.values()
    gw = gateway_factory(config(a, b))
    _, reader = create_key(gw, role="user", scopes=["cluster:read"])
    _, user = create_key(gw, role="user")

    for path in ("/v1/cluster/status", "/api/v1/cluster/status", "/api/v1/workers"):
        assert_error(call(gw.url + path), 401, "authentication_error")
        assert_error(call(gw.url + path, key=user), 403, "permission_error")
    reply = call(gw.url + "/v1/cluster/status", key=reader)
    assert reply.status == 200, reply.text
    status = reply.body
    assert status == call(gw.url + "/api/v1/cluster/status", key=reader).body | {
        "timestamp": status["timestamp"]
    }
    assert status["status"] == "healthy"
    assert status["summary"] == {
        "workers": 2,
        "healthy": 2,
        "draining": 0,
        "in_flight": 0,
        "capacity": 200,
        "models": 1,
    }
    assert status["models"]["m"]["workers"] == [name_of(a), name_of(b)]
    assert status["models"]["m"]["balancer"] == "least_outstanding"  # nothing scraped
    for worker in status["workers"]:
        assert worker["status"] == "healthy"
        assert worker["models"] == ["m"]
        assert (worker["in_flight"], worker["max_concurrent"]) == (0, 100)
        assert worker["source"] == "config"

    listed = workers(gw, reader)
    assert list(listed) == [name_of(a), name_of(b)]
    assert listed[name_of(a)]["url"] == a
    one = call(gw.url + worker_path(name_of(a)), key=reader)
    assert one.body == listed[name_of(a)]
    assert_error(
        call(gw.url + worker_path("m@nowhere:1"), key=reader), 404, "invalid_request_error"
    )

    # Changes need cluster:write: a reader may look, not drain; an unknown worker is a 404.
    drain = worker_path(name_of(a), "drain")
    assert_error(call(gw.url + drain, "POST"), 401, "authentication_error")
    assert_error(call(gw.url + drain, "POST", key=reader), 403, "permission_error")
    assert_error(
        call(gw.url + "/api/v1/workers", "POST", key=reader, json_body={"model": "m", "url": a}),
        403,
        "permission_error",
    )
    assert_error(
        call(gw.url + worker_path(name_of(a)), "DELETE", key=reader), 403, "permission_error"
    )
    for method, path in [
        ("POST", worker_path("m@nowhere:1", "drain")),
        ("POST", worker_path("m@nowhere:1", "restart")),
        ("DELETE", worker_path("m@nowhere:1")),
    ]:
        assert_error(admin(gw, method, path), 404, "invalid_request_error", "worker_not_found")
    assert workers(gw)[name_of(a)]["status"] == "healthy"  # nothing was changed

    # The management app's OpenAPI document has every route, with its scheme and errors.
    paths = call(gw.url + "/openapi.json").body["paths"]
    expected_paths = {
        "/v1/cluster/status": {"get"},
        "/api/v1/cluster/status": {"get"},
        "/api/v1/workers": {"get", "post"},
        "/api/v1/workers/{worker_id}": {"get", "delete"},
        "/api/v1/workers/{worker_id}/drain": {"post"},
        "/api/v1/workers/{worker_id}/restart": {"post"},
    }
    for path, methods in expected_paths.items():
        assert set(paths[path]) == methods, path
        for operation in paths[path].values():
            assert operation["security"] == [{"bearer": []}]
            assert {"401", "403"} <= operation["responses"].keys()
    assert "404" in paths["/api/v1/workers/{worker_id}"]["delete"]["responses"]

    # /models/status needs no key (an operations route).
    models = call(gw.url + "/models/status")
    assert models.status == 200
    expected = {"status": "healthy", "deployments": 2, "usable": 2}
    assert models.body["models"]["m"].items() >= expected.items()


def test_added_worker_takes_traffic_and_outlives_a_restart(
    sim_factory: Callable[..., Sim], gateway_factory: Callable[..., Gateway], tmp_path: Any
) -> None:
    sim = sim_factory({"m": FAST}, replicas=2)
    a, b = sim.urls.values()
    store = {"url": f"sqlite+aiosqlite:///{tmp_path / 'fleet.db'}"}
    cfg = config(a, store=store)
    gw = gateway_factory(cfg)
    with sdk(gw) as client:
        assert {served_by(client) for _ in range(4)} == {name_of(a)}

        # Validated like the config file's deployments, with check-config's messages.
        bad = add(gw, {"model": "m", "url": "ftp://x", "max_concurrent": 0, "wieght": 2})
        assert_error(bad, 400, "invalid_request_error")
        message = bad.body["error"]["message"]
        assert "models.m.deployments[1].url:" in message, message
        assert "models.m.deployments[1].max_concurrent:" in message, message
        assert "models.m.deployments[1].wieght: unknown field (did you mean 'weight'?)" in message
        assert_error(add(gw, {"model": "nope", "url": b}), 400, "invalid_request_error")
        assert_error(
            add(gw, {"model": "m", "url": b, "api_key": "sk-x"}), 400, "invalid_request_error"
        )
        assert_error(add(gw, {"model": "m", "url": a}), 409, "invalid_request_error", "conflict")

        reply = add(gw, {"model": "m", "url": b, "max_concurrent": 7})
        assert reply.status == 201, reply.text
        expected = {"id": name_of(b), "source": "api", "max_concurrent": 7}
        assert reply.body.items() >= expected.items()
        served = {served_by(client) for _ in range(10)}
        assert served == {name_of(a), name_of(b)}
    wait_for(lambda: bool(audit_records(gw, action="worker.add")), 5, what="the audit record")
    records = audit_records(gw, action="worker.add")
    assert [(r["target"], r["details"]["url"]) for r in records] == [(name_of(b), b)]

    gw.stop()
    again = gateway_factory(cfg, env=gw.env)
    assert list(workers(again)) == [name_of(a), name_of(b)]
    assert workers(again)[name_of(b)]["source"] == "api"
    with sdk(again) as client:
        assert name_of(b) in {served_by(client) for _ in range(10)}


def _load(gw: Gateway, until: threading.Event, log: list[tuple[float, str | Exception]]) -> None:
    """Requests one after another, every other one streamed, until ``until`` is set."""
    with sdk(gw) as client:
        n = 0
        while not until.is_set():
            started = time.monotonic()
            try:
                log.append((started, served_by(client, stream=n % 2 == 1)))
            except Exception as exc:  # every failure is counted, none may happen
                log.append((started, exc))
            n += 1


def test_drain_under_load_restart_and_remove(
    sim_factory: Callable[..., Sim], gateway_factory: Callable[..., Gateway]
) -> None:
    sim = sim_factory({"m": SLOW}, replicas=2)
    a, b = sim.urls.values()
    gw = gateway_factory(config(a, b))
    until = threading.Event()
    log: list[tuple[float, str | Exception]] = []
    threads = [threading.Thread(target=_load, args=(gw, until, log)) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: workers(gw)[name_of(a)]["in_flight"] > 0, 10, what="a busy")
        reply = admin(gw, "POST", worker_path(name_of(a), "drain"))
        drained_at = time.monotonic()
        assert reply.status == 200, reply.text
        assert reply.body["status"] == "draining"
        caught = reply.body["in_flight"]
        assert caught > 0  # requests were in flight on it: they must finish, not fail
        wait_for(lambda: workers(gw)[name_of(a)]["in_flight"] == 0, 10, what="a drained")
        status = call(gw.url + "/v1/cluster/status", key=gw.admin_key).body
        assert status["summary"]["draining"] == 1
        assert status["models"]["m"]["status"] == "degraded"
        time.sleep(1.0)
    finally:
        until.set()
        for t in threads:
            t.join(30)
    failures = [entry for _, entry in log if isinstance(entry, Exception)]
    assert failures == []
    later = {who for started, who in log if started > drained_at}
    assert later == {name_of(b)}  # nothing new reached the drained worker
    assert sum(1 for _, who in log if who == name_of(a)) >= caught

    # Restart: drained, its requests waited for (none here), readmitted.
    reply = admin(gw, "POST", worker_path(name_of(a), "restart") + "?wait=5")
    assert reply.status == 200, reply.text
    assert (reply.body["status"], reply.body["in_flight_left"]) == ("healthy", 0)
    with sdk(gw) as client:
        assert name_of(a) in {served_by(client) for _ in range(6)}

    # Remove: gone from the list and from the routing; the model's last worker stays.
    reply = admin(gw, "DELETE", worker_path(name_of(a)))
    assert reply.status == 200, reply.text
    assert reply.body == {
        "id": name_of(a),
        "object": "worker",
        "deleted": True,
        "in_flight_left": 0,
    }
    assert list(workers(gw)) == [name_of(b)]
    with sdk(gw) as client:
        assert {served_by(client) for _ in range(4)} == {name_of(b)}
    assert_error(admin(gw, "DELETE", worker_path(name_of(b))), 409, "invalid_request_error")

    def actions() -> list[str]:
        return sorted(r["action"] for r in audit_records(gw) if r["action"].startswith("worker."))

    wait_for(lambda: len(actions()) == 3, 5, what="three audit records")
    assert actions() == ["worker.drain", "worker.remove", "worker.restart"]


@pytest.mark.redis
def test_a_worker_added_on_one_replica_is_used_by_the_other(
    database_url: str,  # first, so that the gateways stop before their database goes
    redis_url: str,
    sim_factory: Callable[..., Sim],
    gateway_factory: Callable[..., Gateway],
) -> None:
    """Two replicas on one store (a SQLite file, then PostgreSQL) and one Redis."""
    sim = sim_factory({"m": FAST}, replicas=2)
    a, b = sim.urls.values()
    shared = {
        "store": {"url": database_url},
        "redis": {"url": redis_url},
        # So long that only the Redis event explains a change seen within seconds.
        "monitoring": {"fleet_sync_interval": 600},
    }
    one = gateway_factory(config(a, **shared))
    two = gateway_factory(config(a, **shared), env=one.env)
    reply = add(one, {"model": "m", "url": b})
    assert reply.status == 201, reply.text
    wait_for(lambda: name_of(b) in workers(two), 5, what="the worker reaching replica two")
    with sdk(two) as client:
        assert name_of(b) in {served_by(client) for _ in range(8)}
    assert admin(two, "POST", worker_path(name_of(b), "drain")).status == 200
    wait_for(lambda: workers(one)[name_of(b)]["draining"], 5, what="the drain reaching one")


def test_without_redis_replicas_converge_through_the_store(
    sim_factory: Callable[..., Sim], gateway_factory: Callable[..., Gateway], tmp_path: Any
) -> None:
    sim = sim_factory({"m": FAST}, replicas=2)
    a, b = sim.urls.values()
    shared = {
        "store": {"url": f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"},
        "monitoring": {"fleet_sync_interval": 0.5},
    }
    one = gateway_factory(config(a, **shared))
    two = gateway_factory(config(a, **shared), env=one.env)
    assert add(one, {"model": "m", "url": b}).status == 201
    wait_for(lambda: name_of(b) in workers(two), 5, what="the periodic reload on two")
    reply = admin(one, "DELETE", worker_path(name_of(b)))
    assert reply.status == 200, reply.text
    wait_for(lambda: name_of(b) not in workers(two), 5, what="the removal reaching two")


def workers_cli(
    gw: Gateway, *args: str, key: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``swarmgate workers <args>`` against ``gw``, its URL and key from the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWARMGATE_")}
    env |= {"SWARMGATE_URL": gw.url, "SWARMGATE_API_KEY": key or gw.admin_key}
    return subprocess.run(
        [*SWARMGATE, "workers", *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_the_workers_cli(
    sim_factory: Callable[..., Sim], gateway_factory: Callable[..., Gateway]
) -> None:
    sim = sim_factory({"m": FAST}, replicas=2)
    a, b = sim.urls.values()
    gw = gateway_factory(config(a))
    added = workers_cli(gw, "add", "m", b, "--name", "extra", "--max-concurrent", "3")
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["id"] == "extra"
    listed = workers_cli(gw, "list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["ID", "MODEL", "STATUS", "IN", "FLIGHT", "SOURCE", "URL"]
    assert lines[1].split() == [name_of(a), "m", "healthy", "0/100", "config", a]
    assert lines[2].split() == ["extra", "m", "healthy", "0/3", "api", b]

    drained = workers_cli(gw, "drain", name_of(a))
    assert drained.returncode == 0, drained.stderr
    assert json.loads(drained.stdout)["status"] == "draining"
    with sdk(gw) as client:
        assert {served_by(client) for _ in range(4)} == {"extra"}
    restarted = workers_cli(gw, "restart", name_of(a), "--wait", "2")
    assert restarted.returncode == 0, restarted.stderr
    assert json.loads(restarted.stdout)["status"] == "healthy"
    removed = workers_cli(gw, "remove", "extra")
    assert removed.returncode == 0, removed.stderr
    assert list(workers(gw)) == [name_of(a)]

    # Errors: the API's message and exit status 1.
    missing = workers_cli(gw, "drain", "extra")
    assert missing.returncode == 1
    assert "404" in missing.stderr and "no worker 'extra'" in missing.stderr
    _, reader = create_key(gw, role="user", scopes=["cluster:read"])
    refused = workers_cli(gw, "drain", name_of(a), key=reader)
    assert refused.returncode == 1 and "403" in refused.stderr, refused.stderr
    assert workers_cli(gw, "list", key=reader).returncode == 0
