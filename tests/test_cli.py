"""The ``swarmgate`` command as a user runs it: help, version, and ``check-config``."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import click.testing
import pytest
import yaml
from click.testing import CliRunner

from swarmgate import __version__
from swarmgate.cli import main
from tests.plugins.processes import SWARMGATE, Process, free_port, new_admin_key, wait_healthy

EXAMPLE = Path(__file__).parents[1] / "src" / "swarmgate" / "examples" / "swarmgate.yaml"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SWARMGATE_")}
    return subprocess.run(
        [*SWARMGATE, *args],
        capture_output=True,
        text=True,
        env={**clean, **(env or {})},
        timeout=60,
    )


def invoke(*args: str, env: dict[str, str] | None = None) -> click.testing.Result:
    """In process (no interpreter start-up): for the cases that need no real process."""
    clean = dict.fromkeys((k for k in os.environ if k.startswith("SWARMGATE_")), None)
    runner = CliRunner(env={**clean, **(env or {})})
    return runner.invoke(main, list(args), prog_name="swarmgate")


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in sorted(group.commands.items()):
        yield (*prefix, name)
        if isinstance(command, click.Group):
            yield from _commands(command, (*prefix, name))


SUBCOMMANDS = list(_commands(main))


def test_help_lists_every_subcommand() -> None:
    result = run("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: ")
    for name in ("serve", "sim", "demo", "check-config", "version"):
        assert name in result.stdout
    for (name,) in (c for c in SUBCOMMANDS if len(c) == 1):
        assert f"  {name} " in result.stdout or f"  {name}\n" in result.stdout


@pytest.mark.parametrize("command", SUBCOMMANDS, ids=" ".join)
def test_every_subcommand_has_help(command: tuple[str, ...]) -> None:
    result = CliRunner().invoke(main, [*command, "--help"], prog_name="swarmgate")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Usage: swarmgate {' '.join(command)}")
    # Every command says what it does in a line of its own.
    assert len(result.output.strip().splitlines()) >= 3


def test_short_help_option() -> None:
    assert invoke("check-config", "-h").stdout.startswith("Usage: ")


def test_version() -> None:
    result = run("version")
    assert result.returncode == 0
    assert result.stdout.strip() == __version__
    assert invoke("--version").stdout.strip() == f"swarmgate, version {__version__}"


def test_check_config_accepts_the_example() -> None:
    result = run("check-config", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{EXAMPLE}: OK (8 models, 12 deployments)"


def test_check_config_prints_every_problem_with_its_path(tmp_path: Path) -> None:
    config = yaml.safe_load(EXAMPLE.read_text())
    config["server"]["port"] = "eighty"
    config["models"]["phi-3-mini"]["deployments"][1]["url"] = "not-a-url"
    config["models"]["hermes-2"]["deployments"][0]["api_key_env"] = "HERMES_KEY"
    config["models"]["hermes-2"]["colour"] = "blue"
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(config))
    result = run("check-config", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0] == f"swarmgate: invalid configuration in {path}:"
    expected = [
        "  models.hermes-2.deployments[0].api_key_env: $HERMES_KEY is not set",
        "  models.phi-3-mini.deployments[1].url: not a URL (got 'not-a-url')",
        "  models.hermes-2.colour: unknown field",
    ]
    for line in expected:
        assert line in lines, result.stderr
    # The bad value is echoed, so the reader sees what was given.
    assert any(
        line.startswith("  server.port: ") and line.endswith("(got 'eighty')") for line in lines
    ), result.stderr
    assert "Traceback" not in result.stderr
    with_key = invoke("check-config", str(path), env={"HERMES_KEY": "k"})
    assert with_key.exit_code == 2
    assert expected[0] not in with_key.stderr.splitlines()


def test_check_config_reports_an_unknown_default_model(tmp_path: Path) -> None:
    config = yaml.safe_load(EXAMPLE.read_text())
    config["default_model"] = "gpt-4"
    path = tmp_path / "default.yaml"
    path.write_text(yaml.safe_dump(config))
    result = invoke("check-config", str(path))
    assert result.exit_code == 2
    assert "  default_model: 'gpt-4' is not a configured model" in result.stderr.splitlines()


def test_check_config_applies_environment_overrides() -> None:
    result = invoke("check-config", str(EXAMPLE), env={"SWARMGATE_SERVER__PORT": "-1"})
    assert result.exit_code == 2
    assert "  server.port: " in result.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [("models: [unclosed\n", "not valid YAML"), (None, "No such file or directory")],
    ids=["yaml-syntax", "missing-file"],
)
def test_check_config_unreadable_files(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "config.yaml"
    if content is not None:
        path.write_text(content)
    result = invoke("check-config", str(path))
    assert result.exit_code == 2
    assert message in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_serve_refuses_an_invalid_configuration_before_starting(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"models": {"m": {"deployments": [{"url": "nope"}]}}}))
    result = run("serve", "--config", str(path))
    assert result.returncode == 2
    assert "models.m.deployments[0].url: not a URL" in result.stderr


def test_serve_needs_a_config() -> None:
    result = invoke("serve")
    assert result.exit_code == 2
    assert "--config" in result.stderr


def test_serve_and_the_cli_write_nothing_into_the_working_directory(tmp_path: Path) -> None:
    """Relative paths (the default SQLite file, the generated server secret, the audit spool
    and its lock files) live beside the config file, whatever directory the commands run in."""
    conf, work = tmp_path / "conf", tmp_path / "work"
    conf.mkdir()
    work.mkdir()
    port = free_port()
    config = {
        "server": {"port": port},
        "models": {"m": {"deployments": [{"url": f"http://127.0.0.1:{free_port()}"}]}},
        "audit": {"flush_interval": 0.2},
    }
    (conf / "gw.yaml").write_text(yaml.safe_dump(config))
    admin_key = new_admin_key()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWARMGATE_")}
    log = tmp_path / "gw.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*SWARMGATE, "serve", "--config", "../conf/gw.yaml"],
            cwd=work,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**env, "SWARMGATE_ADMIN_KEY": admin_key},
        )
    gw = Process(proc, log, f"http://127.0.0.1:{port}")
    try:
        wait_healthy(gw)
        assert _get(gw.url + "/v1/models", "sk-sg-wrong")[0] == 401  # audited, then stored
        deadline = time.monotonic() + 10
        while not _get(gw.url + "/admin/audit?action=auth.failure", admin_key)[1]["data"]:
            assert time.monotonic() < deadline, gw.output()
            time.sleep(0.1)
        created = subprocess.run(
            [*SWARMGATE, "keys", "create", "--config", "../conf/gw.yaml", "--owner", "o"],
            cwd=work,
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert created.returncode == 0, created.stderr
        # The CLI found the gateway's store and its server secret: its key works there.
        assert _get(gw.url + "/v1/models", json.loads(created.stdout)["secret"])[0] == 200
    finally:
        gw.stop()
    assert list(work.iterdir()) == []
    assert {"swarmgate.db", "swarmgate.secret", "swarmgate-audit.spool.lock"} <= {
        p.name for p in conf.iterdir()
    }


def _get(url: str, key: str) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def test_serve_help_says_swarmgate_config_may_stand_in_for_config() -> None:
    result = invoke("serve", "--help")
    assert result.exit_code == 0
    assert "[required]" not in result.stdout
    assert "env var: SWARMGATE_CONFIG" in result.stdout


def test_serve_reads_swarmgate_config_without_config(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"models": {"m": {"deployments": [{"url": "nope"}]}}}))
    result = invoke("serve", env={"SWARMGATE_CONFIG": str(path)})
    assert result.exit_code == 2
    assert f"invalid configuration in {path}" in result.stderr
