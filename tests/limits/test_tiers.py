"""The ``limits:`` section: shipped tiers, merging, validation, and the example's block."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from swarmgate.config import parse_settings
from swarmgate.errors import ConfigError
from swarmgate.limits.tiers import DEFAULT_TIERS, Limits, LimitSet

EXAMPLE = Path(__file__).parents[2] / "src" / "swarmgate" / "examples" / "swarmgate.yaml"
MODELS = {"m": {"deployments": [{"url": "http://127.0.0.1:9"}]}}


def test_the_shipped_tiers_are_seed_001s_and_default_is_unlimited() -> None:
    tiers = Limits().all_tiers()
    assert [(t.rpm, t.rph, t.concurrent) for t in (tiers["free"], tiers["pro"])] == [
        (10, 100, 2),
        (100, 1000, 10),
    ]
    assert (tiers["enterprise"].rpm, tiers["enterprise"].concurrent) == (1000, 50)
    assert tiers["default"].empty and Limits().tier("no-such").empty
    assert set(DEFAULT_TIERS) == {"default", "free", "pro", "enterprise"}


def test_configured_tiers_replace_or_add_and_overrides_merge() -> None:
    limits = Limits.model_validate({"tiers": {"free": {"rpm": 3}, "gold": {"tpm": 9}}})
    assert limits.tier("free").rph is None and limits.tier("free").rpm == 3
    assert limits.tier("gold").tpm == 9 and limits.tier("pro").rpm == 100
    merged = limits.tier("pro").merged(LimitSet(rpm=7))
    assert (merged.rpm, merged.rph, merged.concurrent) == (7, 1000, 10)
    assert not Limits(enabled=False).any_limit


@pytest.mark.parametrize(
    ("limits", "problem"),
    [
        ({"tiers": {"t": {"burst": 5}}}, "burst is the burst of rps"),
        ({"tiers": {"t": {"rpm": 0}}}, "limits.tiers.t.rpm"),
        ({"models": {"nope": {"rpm": 1}}}, "limits.models: nope: not a configured model"),
        ({"redis_failure": "maybe"}, "limits.redis_failure"),
        ({"tiers": {"t": {"rpx": 1}}}, "limits.tiers.t.rpx: unknown field"),
    ],
)
def test_bad_limits_are_reported_with_their_path(limits: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings({"models": MODELS, "limits": limits}, {})
    assert any(problem in line for line in caught.value.problems), caught.value.problems


def test_the_examples_commented_limits_block_is_valid_configuration() -> None:
    text = EXAMPLE.read_text()
    start, end = text.index("limits:\n"), text.index("\nauth:\n")
    # Uncommented: "  # tiers:" becomes "  tiers:", what is active stays as it is.
    lines = [
        row.replace("  # ", "  ", 1) if row.startswith("  # ") else row
        for row in text[start:end].splitlines()
    ]
    block = yaml.safe_load("\n".join(line for line in lines if not line.lstrip().startswith("#")))
    raw = yaml.safe_load(text)
    assert raw["limits"]["max_share"] == {"free": 0.5}  # the active part
    settings = parse_settings({**raw, **block}, {})
    assert settings.limits.tier("standard").tpm == 100000
    assert settings.limits.global_.rps == 50


def test_environment_overrides_reach_the_limits() -> None:
    env = {"SWARMGATE_LIMITS__GLOBAL__RPS": "20", "SWARMGATE_LIMITS__REDIS_FAILURE": "fail_closed"}
    settings = parse_settings({"models": MODELS}, env)
    assert settings.limits.global_.rps == 20
    assert settings.limits.redis_failure == "fail_closed"
