"""Configuration hot reload: what a reload applies and what it leaves for a restart (pure), and
on real gateways and simulators: ``POST /admin/reload`` with a stream and a slow request in
flight, ``swarmgate reload``, an invalid file refused with check-config's messages, a change
of the file picked up by the watch, and SIGHUP on a ``swarmgate serve`` process."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import openai
import yaml

from swarmgate.api.reload import Applied, applicable, restart_needed
from swarmgate.config import parse_settings
from tests.auth.e2e import admin, audit_records, call, create_key, wait_for
from tests.plugins.processes import SWARMGATE, Gateway, Sim

FAST: dict[str, Any] = {"ttft_ms": 1, "tokens_per_second": 2000, "max_tokens_default": 4}
# 40 tokens take about 1.6 s: caught in flight by a reload.
SLOW: dict[str, Any] = {"ttft_ms": 50, "tokens_per_second": 25, "max_tokens_default": 4}
MESSAGES: list[Any] = [{"role": "user", "content": "hello"}]


def settings(**raw: Any) -> Any:
    base: dict[str, Any] = {"models": {"m": {"deployments": [{"url": "http://a:1"}]}}}
    return parse_settings({**base, **raw}, environ={})


def test_what_needs_a_restart_is_named_and_not_applied() -> None:
    running = settings()
    new = settings(
        server={"port": 9001, "max_body_bytes": 2048},
        models={"n": {"deployments": [{"url": "http://b:2"}]}},
        limits={"tiers": {"gold": {"rpm": 5}}, "redis_timeout": 0.5},
        auth={"secret": "s3cr3t-value"},
    )
    pending = restart_needed(running, new)
    assert pending == [
        "server.port",
        "server.max_body_bytes",
        "auth.secret",
        "limits.redis_timeout",
    ]
    assert not any("s3cr3t" in p for p in pending)  # names, never values
    applied = applicable(running, new)
    assert list(applied.models) == ["n"] and "gold" in applied.limits.tiers
    assert applied.server == running.server and applied.auth == running.auth
    assert applied.limits.redis_timeout == running.limits.redis_timeout
    assert restart_needed(running, settings()) == []


def test_what_a_reload_did_is_summed_up() -> None:
    applied = Applied.between(
        {"m": ["m@a:1", "m@b:1"], "old": ["old@c:1"]},
        {"m": ["m@b:1", "m@d:1"], "new": ["new@c:1"]},
        ["server.port"],
    )
    assert applied == Applied(
        ("server.port",), ("new",), ("old",), ("m@d:1", "new@c:1"), ("m@a:1", "old@c:1")
    )
    assert applied.summary() == (
        "models added: new; models removed: old; deployments added: m@d:1, new@c:1; "
        "deployments removed: m@a:1, old@c:1"
    )
    assert Applied.between({"m": ["x"]}, {"m": ["x"]}, []).summary() == (
        "no model or deployment added or removed"
    )


def test_with_redis_limits_cannot_be_switched_on_or_off_in_place() -> None:
    running = settings(redis={"url": "redis://r:6379"}, limits={"enabled": False})
    new = settings(redis={"url": "redis://r:6379"}, limits={"tiers": {"gold": {"rpm": 5}}})
    assert restart_needed(running, new) == [
        "limits.enabled (on or off, with redis.url: the counter store)"
    ]
    assert applicable(running, new).limits == running.limits


def config(*urls: str, **extra: Any) -> dict[str, Any]:
    return {
        "models": {"m": {"deployments": [{"url": u} for u in urls]}},
        "limits": {"enabled": False},
        "audit": {"flush_interval": 0.2},
        **extra,
    }


def rewrite(gw: Gateway, change: Callable[[dict[str, Any]], None]) -> None:
    """Edit the running gateway's config file (its server, store and audit sections stay)."""
    raw = yaml.safe_load(gw.config_path.read_text())
    change(raw)
    gw.config_path.write_text(yaml.safe_dump(raw))


def models(gw: Gateway) -> set[str]:
    reply = call(gw.url + "/v1/models", key=gw.admin_key)
    assert reply.status == 200, reply.text
    return {m["id"] for m in reply.body["data"]}


def workers(gw: Gateway) -> dict[str, dict[str, Any]]:
    reply = call(gw.url + "/api/v1/workers", key=gw.admin_key)
    assert reply.status == 200, reply.text
    return {w["id"]: w for w in reply.body["data"]}


def name_of(url: str, model: str = "m") -> str:
    return f"{model}@{url.removeprefix('http://')}"


class InFlight:
    """A stream and a slow non-streamed request, run in threads until they end."""

    def __init__(self, gw: Gateway) -> None:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.admin_key, max_retries=0)
        self.results: dict[str, Any] = {}

        def stream() -> None:
            chunks = client.chat.completions.create(
                model="m", messages=MESSAGES, stream=True, max_tokens=40
            )
            self.results["stream"] = [c for c in chunks if c.choices]

        def unary() -> None:
            self.results["unary"] = client.chat.completions.create(
                model="m", messages=MESSAGES, max_tokens=40
            )

        self.threads = [threading.Thread(target=f) for f in (stream, unary)]
        for t in self.threads:
            t.start()

    def wait_started(self, gw: Gateway) -> None:
        def both() -> bool:
            return sum(w["in_flight"] for w in workers(gw).values()) == 2

        wait_for(both, 5, what="both requests in flight")

    def finish(self) -> None:
        for t in self.threads:
            t.join(30)
        chunks = self.results["stream"]
        assert chunks[-1].choices[0].finish_reason == "length"
        assert sum(1 for c in chunks if c.choices[0].delta.content) >= 30
        unary = self.results["unary"]
        assert unary.choices[0].finish_reason == "length"
        assert unary.usage.completion_tokens == 40


def test_admin_reload_applies_the_file_and_drops_nothing_in_flight(
    sim_factory: Callable[..., Sim], gateway_factory: Callable[..., Gateway]
) -> None:
    slow = sim_factory({"m": SLOW}, replicas=2)
    fast = sim_factory({"m": FAST, "n": FAST})
    slow0, slow1 = slow.urls.values()
    gw = gateway_factory(config(slow0))
    added = admin(gw, "POST", "/api/v1/workers", {"model": "m", "url": slow1})
    assert added.status == 201, added.text
    assert set(workers(gw)) == {name_of(slow0), name_of(slow1)}

    fast_path = gw.url + "/fast/v1/chat/completions"
    body = {"model": "m", "messages": MESSAGES}
    assert call(fast_path, "POST", key=gw.admin_key, json_body=body).status == 404

    flight = InFlight(gw)
    flight.wait_started(gw)

    # The file's deployment of m goes, a model comes with a path route; the worker added at
    # run time stays.
    def change(raw: dict[str, Any]) -> None:
        raw["models"].update(
            m={"deployments": [{"url": fast.url}], "balancer": "round_robin"},
            n={"deployments": [{"url": fast.url}], "aliases": ["quick"]},
        )
        raw["routing"] = {"routes": [{"path_prefix": "/fast", "model": "n"}]}

    rewrite(gw, change)
    reply = admin(gw, "POST", "/admin/reload")
    assert reply.status == 200, reply.text
    assert reply.body["reloaded"] is True and reply.body["trigger"] == "api"
    assert reply.body["restart_required"] == []
    assert reply.body["config"] == str(gw.config_path.resolve())
    assert reply.body["models"] == {"added": ["n"], "removed": []}
    assert reply.body["deployments"] == {
        "added": sorted([name_of(fast.url), name_of(fast.url, "n")]),
        "removed": [name_of(slow0)],
    }
    assert set(workers(gw)) == {name_of(fast.url), name_of(slow1), name_of(fast.url, "n")}
    assert models(gw) >= {"m", "n"}
    flight.finish()

    answer = call(
        gw.url + "/v1/chat/completions",
        "POST",
        key=gw.admin_key,
        json_body={"model": "quick", "messages": MESSAGES},
    )
    assert answer.status == 200 and answer.headers["x-swarmgate-model"] == "n"
    routed = call(fast_path, "POST", key=gw.admin_key, json_body=body)
    assert routed.status == 200 and routed.headers["x-swarmgate-model"] == "n", routed.text
    wait_for(lambda: audit_records(gw, action="config.reload") != [], 5, what="audited")
    records = audit_records(gw, action="config.reload")
    assert len(records) == 1 and records[0]["outcome"] == "ok"
    assert records[0]["target"] == str(gw.config_path.resolve())

    # A change that needs a restart is named, not applied.
    rewrite(gw, lambda raw: raw["server"].update(name="renamed"))
    reply = admin(gw, "POST", "/admin/reload")
    assert reply.status == 200 and reply.body["restart_required"] == ["server.name"]
    assert call(gw.url + "/").body["name"] == "swarmgate"
    result = subprocess.run(
        [*SWARMGATE, "reload", "--url", gw.url],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("SWARMGATE_")},
            "SWARMGATE_ADMIN_KEY": gw.admin_key,
        },
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"swarmgate: reloaded {gw.config_path.resolve()} (sha256 ")
    assert "need a restart: server.name" in result.stderr


def _check_config(path: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SWARMGATE, "check-config", path], capture_output=True, text=True, timeout=60
    )


def test_an_invalid_file_is_refused_with_check_configs_messages(
    sim_factory: Callable[..., Sim], gateway_factory: Callable[..., Gateway]
) -> None:
    sim = sim_factory({"m": FAST})
    gw = gateway_factory(config(sim.url))
    before = gw.config_path.read_text()

    def break_it(raw: dict[str, Any]) -> None:
        raw["models"]["m"]["deployments"] = [{"url": "not a url", "wieght": 2}]
        raw["default_model"] = "nope"

    rewrite(gw, break_it)
    checked = _check_config(str(gw.config_path))
    assert checked.returncode == 2
    lines = checked.stderr.splitlines()
    assert lines[0] == f"swarmgate: invalid configuration in {gw.config_path}:"
    expected = [line.removeprefix("  ") for line in lines[1:]]
    assert len(expected) >= 3, checked.stderr  # the url, the unknown field, the default model

    reply = admin(gw, "POST", "/admin/reload")
    assert reply.status == 400, reply.text
    error = reply.body["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_config")
    assert error["problems"] == expected
    assert error["message"].startswith("invalid configuration in ")
    assert "Traceback" not in reply.text

    result = subprocess.run(
        [*SWARMGATE, "reload", "--url", gw.url, "--api-key", gw.admin_key],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    cli_lines = result.stderr.splitlines()
    assert cli_lines[1 : len(lines)] == lines[1:]  # the same problems, as check-config's
    assert cli_lines[0] == f"swarmgate: invalid configuration in {gw.config_path.resolve()}:"

    # The running config is untouched: the model still answers.
    assert models(gw) == {"m"}
    answer = call(
        gw.url + "/v1/chat/completions",
        "POST",
        key=gw.admin_key,
        json_body={"model": "m", "messages": MESSAGES},
    )
    assert answer.status == 200, answer.text
    wait_for(lambda: len(audit_records(gw, action="config.reload")) == 2, 5, what="both audited")
    assert {r["outcome"] for r in audit_records(gw, action="config.reload")} == {"rejected"}
    metrics = call(gw.url + "/metrics").text
    assert "gateway_config_last_reload_successful 0.0" in metrics
    assert 'gateway_config_reloads_total{outcome="rejected",trigger="api"} 2.0' in metrics
    gw.config_path.write_text(before)
    assert admin(gw, "POST", "/admin/reload").status == 200
    metrics = call(gw.url + "/metrics").text
    assert "gateway_config_last_reload_successful 1.0" in metrics
    assert 'gateway_config_reloads_total{outcome="ok",trigger="api"} 1.0' in metrics


def test_a_change_of_the_file_is_reloaded_when_watched(
    sim_factory: Callable[..., Sim], gateway_factory: Callable[..., Gateway]
) -> None:
    sim = sim_factory({"m": FAST, "n": FAST})
    gw = gateway_factory(config(sim.url, reload={"watch": True, "interval": 0.2}))
    rewrite(gw, lambda raw: raw["models"].update(n={"deployments": [{"url": sim.url}]}))
    wait_for(lambda: models(gw) == {"m", "n"}, 5, what="the edited file reloaded")

    # A broken edit: refused once (logged with check-config's lines), the running config stays.
    rewrite(gw, lambda raw: raw["models"]["n"].update(balancer="fastest"))
    wait_for(lambda: "config not reloaded (file)" in gw.output(), 5, what="the refusal logged")
    time.sleep(1.0)  # five more rounds: not logged again, not applied
    assert gw.output().count("config not reloaded (file)") == 1
    assert "models.n.balancer.strategy: " in gw.output()
    assert models(gw) == {"m", "n"}
    # Touched without a change: nothing happens; fixed: reloaded.
    gw.config_path.write_text(gw.config_path.read_text())
    rewrite(gw, lambda raw: raw["models"].pop("n"))
    wait_for(lambda: models(gw) == {"m"}, 5, what="the fixed file reloaded")
    assert gw.output().count("config not reloaded (file)") == 1


def test_sighup_reloads_a_single_process_server_in_place(
    sim_factory: Callable[..., Sim], gateway_factory: Callable[..., Gateway]
) -> None:
    slow = sim_factory({"m": SLOW}, replicas=2)
    gw = gateway_factory(config(*slow.urls.values()))
    flight = InFlight(gw)
    flight.wait_started(gw)
    rewrite(gw, lambda raw: raw["models"].update(n={"deployments": [{"url": slow.url}]}))
    gw.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "n" in models(gw), 5, what="reloaded on SIGHUP")
    assert gw.proc.poll() is None  # the same process: no restart
    flight.finish()
    assert "config reloaded (SIGHUP)" in gw.output()


def test_with_redis_a_reload_reaches_every_worker(
    sim_factory: Callable[..., Sim], gateway_factory: Callable[..., Gateway], redis_url: str
) -> None:
    sim = sim_factory({"m": FAST, "n": FAST})
    gw = gateway_factory(config(sim.url, redis={"url": redis_url}), args=("--workers", "2"))
    wait_for(lambda: gw.output().count("Application startup complete") == 2, 20, what="two workers")
    rewrite(gw, lambda raw: raw["models"].update(n={"deployments": [{"url": sim.url}]}))
    reply = admin(gw, "POST", "/admin/reload")
    assert reply.status == 200, reply.text
    # The worker that answered told the other over Redis, which re-read the file itself.
    wait_for(lambda: "config reloaded (event)" in gw.output(), 10, what="the other worker")
    for _ in range(20):  # a new connection each: either worker may answer
        assert models(gw) == {"m", "n"}


def test_limits_and_tiers_change_in_place(
    sim_factory: Callable[..., Sim], gateway_factory: Callable[..., Gateway]
) -> None:
    sim = sim_factory({"m": FAST})
    raw = config(sim.url)
    raw["limits"] = {"tiers": {"default": {"rpm": 100}}}
    gw = gateway_factory(raw)
    refused = admin(gw, "POST", "/admin/keys", {"name": "g", "owner": "o", "tier": "gold"})
    assert refused.status == 400 and "no tier 'gold'" in refused.text
    _, secret = create_key(gw)

    def chat() -> int:
        return call(
            gw.url + "/v1/chat/completions",
            "POST",
            key=secret,
            json_body={"model": "m", "messages": MESSAGES},
        ).status

    assert [chat() for _ in range(3)] == [200, 200, 200]

    def tighten(raw: dict[str, Any]) -> None:
        raw["limits"] = {"tiers": {"default": {"rpm": 4}, "gold": {"rpm": 1000}}}

    rewrite(gw, tighten)
    assert admin(gw, "POST", "/admin/reload").status == 200
    # The three requests already counted count against the new limit.
    assert [chat() for _ in range(2)] == [200, 429]
    created = admin(gw, "POST", "/admin/keys", {"name": "g", "owner": "o", "tier": "gold"})
    assert created.status == 201, created.text
