"""The routing config is checked against the models: every problem, one line each."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from swarmgate.config import parse_settings
from swarmgate.errors import ConfigError


def config(routing: dict[str, Any] | None = None, **models: dict[str, Any]) -> dict[str, Any]:
    dep = {"deployments": [{"url": "http://127.0.0.1:9000"}]}
    raw: dict[str, Any] = {
        "models": {name: {**dep, **extra} for name, extra in (models or {"m": {}}).items()}
    }
    if routing is not None:
        raw["routing"] = routing
    return raw


def problems(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_settings(raw, {})
    return exc.value.problems


def test_a_full_routing_config_parses() -> None:
    settings = parse_settings(
        config(
            {
                "auto": {
                    "when_missing": True,
                    "rules": [{"when": {"tiers": ["free"]}, "models": ["small"]}],
                },
                "routes": [
                    {"header": "X-Model-Route", "value": "fast", "model": "small"},
                    {"path_prefix": "/big", "model": "big"},
                ],
                "splits": {"ab": {"variants": {"small": 50, "big": 50}}},
                "canaries": {"big": {"model": "small", "percent": 5}},
            },
            small={"capabilities": ["tools"], "context_window": 4096, "fallbacks": ["big"]},
            big={"transform": {"cap_params": {"max_tokens": 100}}},
        ),
        {},
    )
    assert settings.models["small"].fallbacks == ("big",)
    assert settings.routing.all_splits()["big"].variants == {"big": 95, "small": 5}


def test_unknown_fallbacks_and_cycles_are_refused() -> None:
    assert problems(config(m={"fallbacks": ["nope"]})) == [
        "models.m.fallbacks: 'nope' is not a configured model"
    ]
    assert problems(config(a={"fallbacks": ["b"]}, b={"fallbacks": ["a"]})) == [
        "models.a.fallbacks: a cycle: a -> b -> a"
    ]
    assert problems(config(a={"fallbacks": ["a"]})) == [
        "models.a.fallbacks: a model cannot fall back to itself"
    ]


def test_weights_must_sum_to_a_hundred() -> None:
    (problem,) = problems(config({"splits": {"s": {"variants": {"m": 50, "n": 20}}}}))
    assert problem.startswith("routing.splits.s.variants: ")
    assert "must sum to 100 (got 70)" in problem
    assert problems(config({"canaries": {"m": {"model": "m", "percent": 120}}}))


def test_names_the_rules_use_must_exist() -> None:
    got = problems(
        config(
            {
                "auto": {
                    "candidates": ["m", "ghost"],
                    "rules": [{"require": ["telepathy"], "models": ["phantom"]}],
                },
                "routes": [{"header": "x-r", "value": "v", "model": "nowhere"}],
                "splits": {"s": {"variants": {"m": 50, "absent": 50}}},
            }
        )
    )
    assert got == [
        "routing.auto.candidates: 'ghost' is not a configured model",
        "routing.auto.rules[0].models: 'phantom' is not a configured model",
        "routing.auto.rules[0].require: 'telepathy' is not a capability routing knows "
        "(one of json_schema, tools, vision)",
        "routing.routes[0].model: 'nowhere' is not a model or a split",
        "routing.splits.s.variants: 'absent' is not a configured model",
    ]


def test_a_route_matches_on_one_thing() -> None:
    (problem,) = problems(config({"routes": [{"model": "m"}]}))
    assert "exactly one of 'header' or 'path_prefix'" in problem
    (problem,) = problems(config({"routes": [{"path_prefix": "fast/", "model": "m"}]}))
    assert "path_prefix is like '/fast'" in problem
    assert problems(config({"routes": [{"header": "x", "model": "m"}]}))


def test_auto_must_not_shadow_a_model() -> None:
    assert problems(config({"auto": {"name": "m"}})) == [
        "routing.auto.name: 'm' is also a model name"
    ]


def test_transforms_may_not_set_the_model() -> None:
    (problem,) = problems(config(m={"transform": {"set_params": {"model": "x"}}}))
    assert "'model' and 'stream' are chosen by routing" in problem


def test_the_examples_commented_routing_parses_once_uncommented() -> None:
    example = Path(__file__).parents[2] / "src" / "swarmgate" / "examples" / "swarmgate.yaml"
    text = example.read_text()
    block = text[text.index("# routing:") : text.index("# And per model")]
    raw = yaml.safe_load(text)
    raw.update(yaml.safe_load("\n".join(line[2:] for line in block.splitlines())))
    routing = parse_settings(raw, {}, deployment_keys=False).routing
    assert routing.auto is not None and routing.auto.candidates[0] == "phi-3-mini"
    assert set(routing.all_splits()) == {"chat-ab", "mixtral-8x7b"}
