"""The model a request goes to: routes, auto, splits, context windows and transforms."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from swarmgate.config import parse_settings
from swarmgate.errors import BadRequest
from swarmgate.routing.selection import ModelSelector

SETTINGS = parse_settings(
    {
        "default_model": "small",
        "models": {
            "small": {
                "aliases": ["s"],
                "context_window": 50,
                "fallbacks": ["big"],
                "deployments": [{"url": "http://127.0.0.1:1", "input_cost_per_1k": 0.1}],
            },
            "tools": {
                "capabilities": ["function_calling"],
                "transform": {"cap_params": {"max_tokens": 64}},
                "deployments": [{"url": "http://127.0.0.1:2", "input_cost_per_1k": 0.5}],
            },
            "big": {
                "capabilities": ["tools", "vision"],
                "context_window": 1000,
                "deployments": [{"url": "http://127.0.0.1:3", "input_cost_per_1k": 5}],
            },
        },
        "routing": {
            "auto": {"when_missing": False},
            "routes": [
                {"header": "X-Model-Route", "value": "fast", "model": "small"},
                {
                    "path_prefix": "/ab",
                    "model": "ab",
                    "transform": {"response_headers": {"x-route": "ab"}},
                },
            ],
            "splits": {
                "ab": {"variants": {"small": 50, "tools": 50}, "sticky_header": "X-Session-ID"}
            },
            "canaries": {"big": {"model": "tools", "percent": 10}},
        },
    },
    {},
)
SELECTOR = ModelSelector(SETTINGS)
HELLO: dict[str, Any] = {"messages": [{"role": "user", "content": "hello"}]}


def test_nothing_configured_means_no_selector() -> None:
    plain = parse_settings({"models": {"m": {"deployments": [{"url": "http://h:1"}]}}}, {})
    assert ModelSelector.of(plain) is None
    assert ModelSelector.of(SETTINGS) is not None


def test_auto_picks_the_cheapest_capable_model() -> None:
    assert SELECTOR.choose("auto", HELLO, {}).model == "small"
    tools = {**HELLO, "tools": [{"type": "function", "function": {"name": "f"}}]}
    choice = SELECTOR.choose("auto", tools, {})
    assert choice.model == "tools"
    assert choice.request_edit is not None  # the tools model's transform comes with it
    long = {"messages": [{"role": "user", "content": "x" * 400}]}  # 100 tokens > small's 50
    assert SELECTOR.choose("auto", long, {}).model == "tools"  # no window: any prompt fits


def test_no_model_goes_to_the_default_unless_auto_takes_it() -> None:
    assert SELECTOR.choose(None, HELLO, {}).model is None


def test_a_long_prompt_falls_back_to_a_model_it_fits() -> None:
    long = {"messages": [{"role": "user", "content": "x" * 400}]}
    assert SELECTOR.choose("small", long, {}).model == "big"
    assert SELECTOR.choose("s", long, {}).model == "big"  # an alias too
    huge = {"messages": [{"role": "user", "content": "x" * 40_000}]}
    with pytest.raises(BadRequest, match="longer than the context window") as exc:
        SELECTOR.choose("small", huge, {})
    assert exc.value.code == "context_length_exceeded"


def test_routes_override_the_body_model() -> None:
    assert SELECTOR.choose("big", HELLO, {"x-model-route": "fast"}).model == "small"
    assert SELECTOR.choose("big", HELLO, {"x-model-route": "slow"}).variant in ("big", "tools")
    assert SELECTOR.path_route("/ab/v1/chat/completions") == (
        "/v1/chat/completions",
        SETTINGS.routing.routes[1],
    )
    assert SELECTOR.path_route("/abc/v1/chat/completions") is None
    choice = SELECTOR.choose("big", HELLO, {}, path="/ab/v1/chat/completions", sticky="k")
    assert choice.split == "ab" and choice.model == choice.variant in ("small", "tools")
    assert choice.response_edit is not None
    names = [n for n, _ in choice.response_edit.headers([])]
    assert names == [b"x-route", b"x-swarmgate-variant"]


def test_a_split_is_sticky_by_session_header_then_key() -> None:
    def variant(headers: dict[str, str], sticky: str) -> str | None:
        return SELECTOR.choose("ab", HELLO, headers, sticky=sticky).variant

    by_key = {variant({}, f"key{i}") for i in range(50)}
    assert by_key == {"small", "tools"}
    assert {variant({"x-session-id": "s1"}, f"key{i}") for i in range(50)} == {
        variant({"x-session-id": "s1"}, "any")
    }


def test_a_canary_takes_its_percentage() -> None:
    got = Counter(SELECTOR.choose("big", HELLO, {}, sticky=f"k{i}").model for i in range(4000))
    assert 300 < got["tools"] < 500, got
    assert got["big"] + got["tools"] == 4000


def test_fallbacks_after_exhaustion() -> None:
    assert SELECTOR.next_model("small", ["small"]) == "big"
    assert SELECTOR.next_model("big", ["small", "big"]) is None


def test_auto_chooses_among_the_models_the_caller_may_use() -> None:
    tools = {**HELLO, "tools": [{"type": "function", "function": {"name": "f"}}]}
    assert SELECTOR.choose("auto", HELLO, {}, allowed=lambda m: m != "small").model == "tools"
    assert SELECTOR.choose("auto", tools, {}, allowed=lambda m: m == "big").model == "big"
    with pytest.raises(BadRequest, match="no model can serve"):
        SELECTOR.choose("auto", tools, {}, allowed=lambda m: m == "small")


def test_a_split_offers_only_the_variants_the_caller_may_use() -> None:
    only_big = {
        SELECTOR.choose("big", HELLO, {}, sticky=f"k{i}", allowed=lambda m: m == "big").model
        for i in range(200)
    }
    assert only_big == {"big"}
    neither = SELECTOR.choose("ab", HELLO, {}, allowed=lambda m: m == "big")
    assert neither.model == "ab" and neither.variant is None  # no model for the caller
