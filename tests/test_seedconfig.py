"""Seed 004's own ``unified-api-gateway.yaml`` and ``.env``: translated, and served as written."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from swarmgate.config import (
    STRATEGY_ALIASES,
    STRATEGY_OPTIONS,
    load_settings,
    parse_settings,
    seed_translation,
)
from swarmgate.errors import ConfigError
from swarmgate.seedconfig import ALGORITHMS, endpoint_variable, is_seed_config
from tests.plugins.processes import (
    SWARMGATE,
    Process,
    Sim,
    free_port,
    spawn,
    wait_healthy,
)

EXAMPLE = Path(__file__).parents[1] / "examples" / "unified-api-gateway.yaml"
SEED_MODELS = ("mixtral-8x7b", "hermes-2", "openchat-3.5", "phi-3-mini")


def test_the_example_is_detected_and_translated() -> None:
    raw = yaml.safe_load(EXAMPLE.read_text())
    assert is_seed_config(raw)
    assert not is_seed_config({"models": {"m": {"deployments": [{"url": "http://h:1"}]}}})
    settings = load_settings(EXAMPLE, {})
    assert set(settings.models) == set(SEED_MODELS)
    assert settings.default_model == "mixtral-8x7b"
    # workers: 4 beside its rate limits, with no Redis to share them: one worker, said so.
    assert settings.server.port == 8000 and settings.server.workers == 1
    assert any(m.startswith("service.workers: 4 → server.workers: 1") for m in
               seed_translation(EXAMPLE, {}).mapped)  # fmt: skip
    with_redis = yaml.safe_load(EXAMPLE.read_text()) | {"redis": {"url": "redis://h:6379/0"}}
    assert parse_settings(with_redis, {}).server.workers == 4
    # performance.rate_limit_rps and max_concurrent_requests: the gateway's global limits.
    assert (settings.limits.global_.rps, settings.limits.global_.concurrent) == (50, 100)
    assert settings.limits.enabled
    hermes = settings.models["hermes-2"].deployments
    assert [(d.url, d.weight, d.max_concurrent) for d in hermes] == [
        ("http://127.0.0.1:11401", 0.8, 20)
    ]
    assert settings.timeouts.total == 30 and settings.timeouts.first_byte == 30
    # No authentication in the format: anonymous callers, never an open admin API.
    assert settings.auth.enabled and settings.auth.anonymous
    assert not settings.auth.open_admin_without_auth


def test_the_seeds_environment_variables_override_the_file() -> None:
    env = {
        "API_GATEWAY_PORT": "9100",
        "API_GATEWAY_HOST": "0.0.0.0",
        "API_GATEWAY_WORKERS": "2",
        "RATE_LIMITING_ENABLED": "false",  # else one worker: no Redis to share the limits
        "DEFAULT_MODEL": "phi-3-mini",
        "REQUEST_TIMEOUT_SECONDS": "12",
        "MIXTRAL_8X7B_ENDPOINT": "http://10.0.0.1:1, http://10.0.0.2:2",
        "OPENCHAT_3_5_ENDPOINT": "http://10.0.0.3:3",
    }
    settings = load_settings(EXAMPLE, env)
    assert (settings.server.host, settings.server.port, settings.server.workers) == (
        "0.0.0.0",
        9100,
        2,
    )
    assert settings.default_model == "phi-3-mini"
    assert settings.timeouts.total == 12
    assert [d.url for d in settings.models["mixtral-8x7b"].deployments] == [
        "http://10.0.0.1:1",
        "http://10.0.0.2:2",
    ]
    assert [d.weight for d in settings.models["mixtral-8x7b"].deployments] == [1.0, 1.0]
    assert settings.models["openchat-3.5"].deployments[0].url == "http://10.0.0.3:3"
    assert endpoint_variable("phi-3-mini") == "PHI_3_MINI_ENDPOINT"


def test_the_translation_says_what_it_maps_and_ignores() -> None:
    translation = seed_translation(EXAMPLE, {"RATE_LIMIT_RPS": "50", "PROMETHEUS_PORT": "9"})
    assert translation is not None
    assert "service.port → server.port" in translation.mapped
    assert "performance.rate_limit_rps → limits.global.rps" in translation.mapped
    assert "$RATE_LIMIT_RPS → limits.global.rps" in translation.mapped
    assert any(line.startswith("$PROMETHEUS_PORT: ") for line in translation.ignored)
    assert not any("cost_per_request" in line for line in translation.ignored)
    mapped = "models.mixtral-8x7b.cost_per_request → models.mixtral-8x7b.deployments[*]."
    assert mapped + "cost_per_request" in translation.mapped
    settings = parse_settings(yaml.safe_load(EXAMPLE.read_text()), {})
    assert settings.models["mixtral-8x7b"].deployments[0].cost_per_request == 0.1
    assert seed_translation(Path(__file__).parents[1] / "examples" / "swarmgate.yaml", {}) is None


def test_the_load_balancer_algorithm_is_each_models_balancer() -> None:
    settings = load_settings(EXAMPLE, {})
    assert {settings.balancing_of(settings.models[m]).strategy for m in SEED_MODELS} == {
        "round_robin"
    }
    variable = load_settings(EXAMPLE, {"LOAD_BALANCER_ALGORITHM": "least_connections"})
    assert variable.balancing_of(variable.models["hermes-2"]).strategy == "least_outstanding"
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw["load_balancer"]["algorithm"] = "intelligent"
    with pytest.raises(ConfigError) as exc:
        parse_settings(raw, {})
    assert [p for p in exc.value.problems if "balancer" in p] == [
        "load_balancer.algorithm: 'intelligent' is not a balancer swarmgate has (one of "
        + ", ".join(sorted(ALGORITHMS))
        + ")"
    ]
    assert {*STRATEGY_OPTIONS, *STRATEGY_ALIASES} == ALGORITHMS


def test_bad_seed_values_are_reported_with_swarmgates_paths() -> None:
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw["service"]["port"] = "eighty"
    raw["models"]["hermes-2"]["endpoint"] = "nowhere"
    del raw["models"]["phi-3-mini"]["endpoint"]
    raw["gateway"]["default_model"] = "gpt-4"
    with pytest.raises(ConfigError) as exc:
        parse_settings(raw, {})
    problems = exc.value.problems
    assert "models.phi-3-mini.endpoint: required (or set $PHI_3_MINI_ENDPOINT)" in problems
    assert "models.hermes-2.deployments[0].url: not a URL (got 'nowhere')" in problems
    assert any(p.startswith("server.port: ") for p in problems)
    assert "default_model: 'gpt-4' is not a configured model" in problems


def test_check_config_shows_the_mapping_and_what_it_ignores() -> None:
    result = subprocess.run(
        [*SWARMGATE, "check-config", str(EXAMPLE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "unified-api-gateway format" in out
    assert "  gateway.default_model → default_model" in out
    assert "ignored (no equivalent in swarmgate):" in out
    # The seed's health and circuit settings become every model's (its values are the
    # defaults, so they are mapped, not left behind).
    assert (
        "  load_balancer.circuit_breaker_threshold → models.hermes-2.circuit_breaker.threshold"
        in out
    )
    assert "  load_balancer.health_check_interval → models.hermes-2.health_check.interval" in out
    assert "auth.anonymous: true" in out
    assert out.strip().endswith("OK (4 models, 4 deployments)")
    # Its four workers without Redis would each count its global limits alone: one is served.
    assert "  service.workers: 4 → server.workers: 1: without Redis" in out
    assert "serve will refuse this" not in result.stderr


# Seed 004's validation commands, exactly as written, with its address replaced by the test's.
SEED_COMMANDS = r"""
set -e
curl -X GET http://192.168.10.29:8000/health > health.json
curl -X GET http://192.168.10.29:8000/v1/models > models.json
curl -X POST http://192.168.10.29:8000/v1/chat/completions \
  -H "Content-Type: application/json" \
  -d '{"messages": [{"role": "user", "content": "Test routing"}], "max_tokens": 50}' > chat.json
for i in {1..10}; do
  curl -X POST http://192.168.10.29:8000/v1/chat/completions \
    -H "Content-Type: application/json" \
    -d '{"messages": [{"role": "user", "content": "Load test $i"}], "max_tokens": 20}' \
    > load-$i.json &
done
wait
curl -X GET http://192.168.10.29:8000/metrics | grep gateway > metrics.txt
"""


@pytest.mark.slow
def test_seed_004s_validation_commands_pass_against_its_own_file(
    tmp_path: Path, sim_factory: Callable[..., Sim]
) -> None:
    sims = {
        model: sim_factory({model: {"ttft_ms": 5, "tokens_per_second": 2000}})
        for model in SEED_MODELS
    }
    config = tmp_path / "unified-api-gateway.yaml"
    shutil.copy(EXAMPLE, config)
    port = free_port()
    env = {"API_GATEWAY_PORT": str(port), "API_GATEWAY_WORKERS": "1"}
    env |= {endpoint_variable(model): sim.url for model, sim in sims.items()}
    log = tmp_path / "gateway.log"
    gateway = Process(spawn([*SWARMGATE, "serve", "--config", str(config)], log, env), log, "")
    gateway.url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(gateway)
        script = SEED_COMMANDS.replace("192.168.10.29:8000", f"127.0.0.1:{port}")
        result = subprocess.run(
            ["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr + gateway.output()
        # Expected: {"status": "healthy", "gateway": "unified-api-gateway", "models": [...4],
        # "timestamp": "..."}
        health = json.loads((tmp_path / "health.json").read_text())
        assert health["status"] == "healthy" and health["gateway"] == "unified-api-gateway"
        assert health["models"] == ["mixtral-8x7b", "hermes-2", "openchat-3.5", "phi-3-mini"]
        assert health["timestamp"]
        models = json.loads((tmp_path / "models.json").read_text())
        assert {m["id"] for m in models["data"]} == set(SEED_MODELS)
        chat = json.loads((tmp_path / "chat.json").read_text())
        assert chat["model"] == "mixtral-8x7b"  # no model named: the default model
        assert chat["choices"][0]["message"]["content"]
        for i in range(1, 11):
            reply = json.loads((tmp_path / f"load-{i}.json").read_text())
            assert reply["choices"][0]["message"]["content"], reply
        metrics = (tmp_path / "metrics.txt").read_text().splitlines()
        assert any(line.startswith("gateway_requests_total{") for line in metrics)
        # Keys still mean something: a bad one is refused, the admin API stays closed.
        assert _status(f"{gateway.url}/v1/models", "sk-sg-wrong") == 401
        assert _status(f"{gateway.url}/admin/keys", None) == 403  # anonymous: a guest
    finally:
        gateway.stop()
    assert "Traceback" not in gateway.output()


def _status(url: str, key: str | None) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code
