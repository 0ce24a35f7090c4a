"""Per-environment profiles: chosen by ``--profile`` or ``SWARMGATE_PROFILE``, checked each by
``check-config``, and seed 003's example read as that seed writes it."""

from __future__ import annotations

import json
import textwrap
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from swarmgate.config import load_settings, parse_settings
from swarmgate.errors import ConfigError
from tests.api.e2e import FAST
from tests.plugins.processes import Gateway, Sim
from tests.test_cli import invoke, run

# Seed 003's "Environment-Specific Configuration", under ``profiles``, as the seed writes it.
SEED_003 = textwrap.dedent(
    """\
    models:
      m:
        deployments: [{url: "http://127.0.0.1:9001"}]
        circuit_breaker: {threshold: 20}
    limits:
      global: {rps: 50}
    profiles:
      # Development
      development:
        rate_limiting:
          enabled: false
        authentication:
          bypass_local: true
        logging:
          level: debug

      # Staging
      staging:
        rate_limiting:
          requests_per_second: 100
        authentication:
          strict_validation: true
        circuit_breaker:
          failure_threshold: 10

      # Production
      production:
        rate_limiting:
          requests_per_second: 1000
        authentication:
          strict_validation: true
          token_refresh: true
        circuit_breaker:
          failure_threshold: 5
          timeout: 30s
    """
)


@pytest.fixture
def seed_file(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(SEED_003)
    return path


def test_without_a_profile_the_base_is_served(seed_file: Path) -> None:
    settings = load_settings(seed_file, {})
    assert settings.limits.enabled
    assert settings.limits.global_.rps == 50
    assert settings.models["m"].circuit_breaker.threshold == 20


def test_seed_003_development_turns_rate_limiting_off(seed_file: Path) -> None:
    settings = load_settings(seed_file, {}, profile="development")
    assert not settings.limits.enabled
    assert settings.models["m"].circuit_breaker.threshold == 20


def test_seed_003_production_has_the_stricter_circuit_breaker(seed_file: Path) -> None:
    settings = load_settings(seed_file, {}, profile="production")
    breaker = settings.models["m"].circuit_breaker
    assert (breaker.threshold, breaker.open_seconds) == (5, 30.0)
    assert settings.limits.enabled
    assert settings.limits.global_.rps == 1000
    staging = load_settings(seed_file, {}, profile="staging")
    assert staging.models["m"].circuit_breaker.threshold == 10
    assert staging.limits.global_.rps == 100


def test_the_environment_chooses_the_profile_and_overrides_it(seed_file: Path) -> None:
    env = {"SWARMGATE_PROFILE": "production"}
    assert load_settings(seed_file, env).models["m"].circuit_breaker.threshold == 5
    # The environment's overrides come last, over the profile too.
    env["SWARMGATE_LIMITS__GLOBAL__RPS"] = "7"
    assert load_settings(seed_file, env).limits.global_.rps == 7
    # "" is the base, whatever the environment says (check-config's view of the file).
    assert load_settings(seed_file, env, profile="").limits.global_.rps == 7
    assert load_settings(seed_file, env, profile="").models["m"].circuit_breaker.threshold == 20


def test_an_unknown_profile_is_refused_with_the_known_ones(seed_file: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(seed_file, {}, profile="prod")
    assert caught.value.problems == [
        "profile 'prod': not in profiles (development, staging, production)"
    ]


def test_a_profile_in_swarmgates_own_shape_merges_key_by_key() -> None:
    raw = {
        "models": {"m": {"deployments": [{"url": "http://a:1"}], "queue_timeout": 2}},
        "server": {"port": 9000, "host": "0.0.0.0"},
        "profiles": {"dev": {"server": {"port": 9100}, "models": {"m": {"queue_timeout": 5}}}},
    }
    settings = parse_settings(raw, {}, profile="dev")
    assert (settings.server.host, settings.server.port) == ("0.0.0.0", 9100)
    assert settings.models["m"].queue_timeout == 5
    assert settings.models["m"].deployments[0].url == "http://a:1"
    # The document itself is left as it was (a second profile starts from the same base).
    assert raw["server"] == {"port": 9000, "host": "0.0.0.0"}
    assert parse_settings(raw, {}).server.port == 9000


def test_a_bad_value_in_a_profile_is_reported_at_its_path() -> None:
    raw = {
        "models": {"m": {"deployments": [{"url": "http://a:1"}]}},
        "profiles": {"dev": {"server": {"port": "eighty"}}},
    }
    parse_settings(raw, {})  # the base is fine
    with pytest.raises(ConfigError) as caught:
        parse_settings(raw, {}, profile="dev")
    assert any(p.startswith("server.port:") for p in caught.value.problems)


def test_check_config_validates_every_profile(tmp_path: Path, seed_file: Path) -> None:
    result = run("check-config", str(seed_file))
    assert result.returncode == 0, result.stderr
    for name in ("development", "staging", "production"):
        assert f"profile {name}: OK" in result.stdout
    assert (
        "profiles.production.circuit_breaker.timeout → models.*.circuit_breaker.open_seconds"
        in (result.stdout)
    )
    assert "profiles.production.authentication.token_refresh: ignored" in result.stdout
    # The environment's choice is serve's: check-config still checks the base and them all.
    chosen = run("check-config", str(seed_file), env={"SWARMGATE_PROFILE": "nope"})
    assert chosen.returncode == 0, chosen.stderr
    assert chosen.stdout.count(": OK") == 4

    broken = tmp_path / "broken.yaml"
    broken.write_text(SEED_003.replace("failure_threshold: 10", "failure_threshold: 0"))
    result = run("check-config", str(broken))
    assert result.returncode == 2
    assert "profile development: OK" in result.stdout
    assert "profile staging: OK" not in result.stdout
    assert "invalid configuration in" in result.stderr
    assert "profile staging:" in result.stderr
    assert "models.m.circuit_breaker.threshold:" in result.stderr


def test_serve_refuses_an_unknown_profile_before_starting(seed_file: Path) -> None:
    result = invoke("serve", "--config", str(seed_file), "--profile", "qa")
    assert result.exit_code == 2
    assert "profile 'qa': not in profiles" in result.output


def test_serve_passes_the_profile_to_its_workers(
    gateway_factory: Callable[..., Gateway], sim_factory: Callable[..., Sim]
) -> None:
    sim = sim_factory({"chat": FAST})
    config = {
        "server": {"name": "base-edge"},
        "models": {"chat": {"deployments": [{"url": sim.url}]}},
        "profiles": {"production": {"server": {"name": "prod-edge"}}},
    }
    gw = gateway_factory(config, args=("--profile", "production"))
    with urllib.request.urlopen(gw.url + "/health", timeout=5) as reply:
        assert json.loads(reply.read())["gateway"] == "prod-edge"
