"""Profile validation: every mistake is reported with where it is; the demo fleet loads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

import swarmgate.sim
from swarmgate.errors import ConfigError
from swarmgate.sim import load_fleet_profile, parse_fleet_profile

DEMO = Path(swarmgate.sim.__file__).parent / "demo_fleet.yaml"


def test_defaults_fill_a_minimal_profile() -> None:
    profile = parse_fleet_profile({"servers": [{"name": "a", "models": {"m": {}}}]})
    model = profile.servers[0].models["m"]
    assert profile.servers[0].host == "127.0.0.1"
    assert profile.servers[0].port == 0
    assert profile.servers[0].speed == 1
    assert model.slots == 4
    assert model.prefill_tokens_per_second is None  # ttft_ms whatever the prompt's length
    assert model.prefix_cache.enabled
    assert model.failures.error_rate == 0
    assert not model.is_embedding


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (
            {"servers": [{"name": "a", "models": {"m": {"slotz": 3}}}]},
            "servers[0].models.m.slotz: unknown field",
        ),
        ({"servers": [{"name": "a", "models": {"m": {"slots": 0}}}]}, "servers[0].models.m.slots:"),
        (
            {"servers": [{"name": "a", "models": {"m": {"tokens_per_second": 0}}}]},
            "tokens_per_second",
        ),
        (
            {"servers": [{"name": "a", "models": {"m": {"prefill_tokens_per_second": 0}}}]},
            "servers[0].models.m.prefill_tokens_per_second:",
        ),
        ({"servers": [{"name": "a", "speed": 0, "models": {"m": {}}}]}, "servers[0].speed:"),
        (
            {"servers": [{"name": "a", "models": {"m": {"shared_prefill": True}}}]},
            "shared_prefill needs prefill_tokens_per_second",
        ),
        ({"servers": [{"name": "a"}]}, "servers[0].models: required"),
        ({"servers": [{"name": "a", "models": {}}]}, "servers[0].models:"),
        ({"servers": []}, "servers:"),
        ({}, "servers: required"),
        ({"servers": [{"name": "a", "port": 70000, "models": {"m": {}}}]}, "servers[0].port:"),
        (
            {"servers": [{"name": "a", "models": {"m": {"failures": {"error_rate": 1.5}}}}]},
            "servers[0].models.m.failures.error_rate:",
        ),
        (
            {
                "servers": [
                    {
                        "name": "a",
                        "models": {"m": {"failures": {"error_rate": 0.6, "hang_rate": 0.6}}},
                    }
                ]
            },
            "must not exceed 1",
        ),
        (
            {"servers": [{"name": "a", "models": {"m": {}}}, {"name": "a", "models": {"m": {}}}]},
            "server names must be distinct",
        ),
        (
            {
                "servers": [
                    {"name": "a", "port": 9000, "models": {"m": {}}},
                    {"name": "b", "port": 9000, "models": {"m": {}}},
                ]
            },
            "same host and port",
        ),
        ("not a mapping", "FleetProfile"),
    ],
)
def test_invalid_profiles_are_config_errors(raw: object, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_fleet_profile(raw)
    assert any(problem in p for p in info.value.problems), info.value.problems


def test_profile_is_frozen() -> None:
    profile = parse_fleet_profile({"servers": [{"name": "a", "models": {"m": {}}}]})
    with pytest.raises(ValueError, match="frozen"):
        profile.servers[0].models["m"].slots = 9  # type: ignore[misc]


def test_load_reports_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml"):
        load_fleet_profile(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("servers: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_fleet_profile(bad)


def test_demo_fleet_has_two_replicas_of_seed_004_models_an_embedder_and_media() -> None:
    profile = load_fleet_profile(DEMO)
    served: dict[str, list[int]] = {}
    for server in profile.servers:
        assert server.host == "127.0.0.1"
        for model in server.models:
            served.setdefault(model, []).append(server.port)
    for model in ("mixtral-8x7b", "hermes-2", "openchat-3.5", "phi-3-mini"):
        assert len(served[model]) == 2, model
    assert served["embed-small"] == [11408]
    for model in ("image-small", "tts-small", "whisper-small"):
        assert served[model] == [11409], model
    ports = sorted({p for ps in served.values() for p in ps})
    assert ports == list(range(11400, 11410))
    for server in profile.servers:
        for name, model in server.models.items():
            if name == "embed-small":
                assert model.embedding_dim == 384
            elif model.modality == "text":
                assert 50 <= model.ttft_ms <= 300
                assert 30 <= model.tokens_per_second <= 150
    mixtral = [s.models["mixtral-8x7b"] for s in profile.servers if "mixtral-8x7b" in s.models]
    phi = [s.models["phi-3-mini"] for s in profile.servers if "phi-3-mini" in s.models]
    assert max(m.tokens_per_second for m in mixtral) < min(p.tokens_per_second for p in phi)
    assert mixtral[0].tokens_per_second != mixtral[1].tokens_per_second


def test_every_profile_in_the_simulator_docs_is_valid() -> None:
    page = Path(__file__).resolve().parents[2] / "docs" / "simulator.md"
    blocks = re.findall(r"```yaml\n(.*?)```", page.read_text(), re.DOTALL)
    profiles = [parse_fleet_profile(yaml.safe_load(block)) for block in blocks]
    assert len(profiles) >= 2
    skewed = profiles[-1]
    assert [s.speed for s in skewed.servers] == [1, 1, 0.5, 0.25]
    assert len({s.models["llama"] for s in skewed.servers}) == 1  # one model, four boxes
