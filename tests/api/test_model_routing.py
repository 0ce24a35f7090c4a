"""Model routing end to end: real gateway and simulator processes, the official OpenAI SDK.

One simulator serves one model, ``chat``; every gateway model is a deployment of it under its
upstream name, so the model a request went to is read from ``x-swarmgate-model``.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai import OpenAI

from tests.api.e2e import FAST, MESSAGES, Processes, assert_clean_log
from tests.plugins.processes import Gateway, free_port

LONG = [{"role": "user", "content": "word " * 400}]  # ~500 tokens: over cheap's window
TOOLS: Any = [
    {
        "type": "function",
        "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}},
    }
]
IMAGE: Any = [
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        ],
    }
]


@pytest.fixture(scope="module")
def gw(procs: Processes) -> Iterator[Gateway]:
    sim = procs.sim(
        {"chat": FAST, "busy": {**FAST, "failures": {"error_rate": 1.0, "error_status": 429}}}
    )

    def model(price: float, **extra: Any) -> dict[str, Any]:
        dep = {"url": sim.url, "model": "chat", "input_cost_per_1k": price}
        return {"deployments": [{**dep, "output_cost_per_1k": price}], **extra}

    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    config = {
        "models": {
            "cheap": model(0.1, context_window=200, fallbacks=["tooly"]),
            "tooly": model(1.0, capabilities=["tools"]),
            "premium": model(5.0, capabilities=["tools", "vision"]),
            "primary": {"fallbacks": ["backup"], "deployments": [{"url": dead}]},
            "backup": model(1.0),
            "orphan": {"deployments": [{"url": dead}]},
            # Both deployments answer 429: busy, not broken; the chain takes over.
            "throttled": {
                "fallbacks": ["backup"],
                "deployments": [
                    {"url": sim.url, "model": "busy", "name": f"busy-{i}"} for i in (1, 2)
                ],
            },
            "throttled-alone": {"deployments": [{"url": sim.url, "model": "busy"}]},
            "arm-a": model(1.0),
            "arm-b": model(1.0),
            "capped": model(
                1.0,
                transform={
                    "set_params": {"max_tokens": 2},
                    "cap_params": {"max_tokens": 3},
                    "response_headers": {"x-capped": "yes"},
                    "remove_response_headers": ["x-swarmgate-deployment"],
                },
            ),
        },
        "routing": {
            "auto": {"candidates": ["cheap", "tooly", "premium"]},
            "routes": [
                {"header": "X-Model-Route", "value": "fast", "model": "cheap"},
                {"path_prefix": "/premium", "model": "premium"},
            ],
            "splits": {"experiment": {"variants": {"arm-a": 70, "arm-b": 30}}},
        },
    }
    gateway = procs.gateway(config)
    yield gateway
    assert_clean_log(gateway)


def client(gw: Gateway, key: str | None = None, path: str = "") -> OpenAI:
    return OpenAI(base_url=f"{gw.url}{path}/v1", api_key=key or gw.admin_key, max_retries=0)


def served_by(c: OpenAI, **kw: Any) -> str:
    raw = c.chat.completions.with_raw_response.create(**{"messages": MESSAGES, **kw})
    raw.parse()
    return raw.headers["x-swarmgate-model"]


def new_key(gw: Gateway, name: str) -> str:
    body = {"name": name, "owner": name, "role": "user"}
    request = urllib.request.Request(
        gw.url + "/admin/keys",
        data=json.dumps(body).encode(),
        headers={"authorization": f"Bearer {gw.admin_key}", "content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        secret: str = json.loads(reply.read())["secret"]
    return secret


def test_auto_picks_the_cheapest_model_the_request_can_use(gw: Gateway) -> None:
    with client(gw) as c:
        assert served_by(c, model="auto") == "cheap"
        assert served_by(c, model="auto", tools=TOOLS) == "tooly"
        assert served_by(c, model="auto", messages=IMAGE) == "premium"
        assert served_by(c, model="auto", messages=LONG) == "tooly"  # too long for cheap


def test_a_prompt_over_the_window_goes_to_the_fallback(gw: Gateway) -> None:
    with client(gw) as c:
        assert served_by(c, model="cheap") == "cheap"
        assert served_by(c, model="cheap", messages=LONG) == "tooly"


def test_a_fallback_serves_when_the_primary_is_down(gw: Gateway) -> None:
    with client(gw) as c:
        raw = c.chat.completions.with_raw_response.create(model="primary", messages=MESSAGES)
        assert raw.headers["x-swarmgate-model"] == "backup"
        assert raw.parse().choices[0].message.content
        stream = c.chat.completions.create(model="primary", messages=MESSAGES, stream=True)
        assert "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
        # Without a fallback, the same outage is the client's 502.
        with pytest.raises(openai.APIStatusError) as exc:
            c.chat.completions.create(model="orphan", messages=MESSAGES)
    assert exc.value.status_code == 502


def test_a_model_whose_deployments_all_answer_429_falls_back(gw: Gateway) -> None:
    with client(gw) as c:
        raw = c.chat.completions.with_raw_response.create(model="throttled", messages=MESSAGES)
        assert raw.headers["x-swarmgate-model"] == "backup"
        assert raw.parse().choices[0].message.content
        # Without a fallback, the deployment's own 429 (and its Retry-After) is the answer.
        with pytest.raises(openai.RateLimitError) as exc:
            c.chat.completions.create(model="throttled-alone", messages=MESSAGES)
    assert exc.value.response.headers["retry-after"] == "1"


def test_routes_by_header_and_by_path(gw: Gateway) -> None:
    with client(gw) as c:
        assert served_by(c, model="premium", extra_headers={"X-Model-Route": "fast"}) == "cheap"
        assert served_by(c, model="premium", extra_headers={"X-Model-Route": "slow"}) == "premium"
    with client(gw, path="/premium") as c:
        assert served_by(c, model="cheap") == "premium"


def test_an_ab_split_follows_its_weights_and_sticks_to_a_key(gw: Gateway) -> None:
    seen: Counter[str] = Counter()
    for i in range(80):
        with client(gw, new_key(gw, f"ab-{i}-{time.time_ns()}")) as c:
            variants = set()
            for _ in range(3):
                raw = c.chat.completions.with_raw_response.create(
                    model="experiment", messages=MESSAGES
                )
                raw.parse()
                assert raw.headers["x-swarmgate-variant"] == raw.headers["x-swarmgate-model"]
                variants.add(raw.headers["x-swarmgate-variant"])
        assert len(variants) == 1, variants  # one user, one variant
        seen[variants.pop()] += 1
    # 70/30 over 80 keys: 56 expected, sd ~4.1; these bounds are ~3 sd.
    assert 44 <= seen["arm-a"] <= 68, seen
    assert seen["arm-a"] + seen["arm-b"] == 80
    with urllib.request.urlopen(gw.url + "/metrics", timeout=5) as r:
        metrics = r.read().decode()
    line = next(
        m
        for m in metrics.splitlines()
        if m.startswith("gateway_variant_requests_total{")
        and 'variant="arm-b"' in m
        and 'split="experiment"' in m
    )
    assert float(line.rsplit(" ", 1)[1]) == 3 * seen["arm-b"]


def test_a_transform_sets_and_caps_max_tokens(gw: Gateway) -> None:
    with client(gw) as c:
        raw = c.chat.completions.with_raw_response.create(
            model="capped", messages=MESSAGES, max_tokens=50
        )
        usage = raw.parse().usage
        assert usage is not None and usage.completion_tokens == 3
        assert raw.headers["x-capped"] == "yes"
        assert "x-swarmgate-deployment" not in raw.headers
        absent = c.chat.completions.create(model="capped", messages=MESSAGES)
        assert absent.usage is not None and absent.usage.completion_tokens == 2
        small = c.chat.completions.create(model="capped", messages=MESSAGES, max_tokens=1)
        assert small.usage is not None and small.usage.completion_tokens == 1
        stream = c.chat.completions.create(
            model="capped",
            messages=MESSAGES,
            max_tokens=50,
            stream=True,
            stream_options={"include_usage": True},
        )
        counted = [ch.usage for ch in stream if ch.usage is not None]
        assert counted and counted[-1].completion_tokens == 3
        # Another model is untouched.
        other = c.chat.completions.create(model="backup", messages=MESSAGES, max_tokens=50)
        assert other.usage is not None and other.usage.completion_tokens > 3
