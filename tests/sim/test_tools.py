"""The simulator speaks tools and schemas (issue 17, item 1): tool calls honouring
``tool_choice`` and ``parallel_tool_calls``, with arguments that validate against each tool's
schema, streamed as OpenAI streams them; text after a ``tool`` message; JSON content for
``response_format``; all of it a function of the seed, and valid by OpenAI's schema."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from importlib.resources import files
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from jsonschema import Draft202012Validator

from swarmgate.sim import Fleet
from tests.openai_schema import problems
from tests.sim.helpers import StartSim, tool_calls_of

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "unit", "days"],
    "additionalProperties": False,
}
TIME = {
    "type": "object",
    "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
    "required": ["zone"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "parameters": WEATHER, "strict": True},
    },
    {"type": "function", "function": {"name": "get_time", "parameters": TIME}},
]
PARAMETERS = {"get_weather": WEATHER, "get_time": TIME}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture
async def url(sim: StartSim) -> str:
    return await sim({"m": {"max_tokens_default": 5}}) + "/v1/chat/completions"


async def chat(http: aiohttp.ClientSession, url: str, **fields: Any) -> dict[str, Any]:
    async with http.post(url, json={"model": "m", **fields}) as r:
        assert r.status == 200, await r.text()
        body = await r.json()
    assert problems("CreateChatCompletionResponse", body) == [], body
    return body


async def chunks(http: aiohttp.ClientSession, url: str, **fields: Any) -> list[dict[str, Any]]:
    request = {"model": "m", "stream": True, "stream_options": {"include_usage": True}, **fields}
    async with http.post(url, json=request) as r:
        assert r.status == 200, await r.text()
        data = await r.read()
    events = [e.removeprefix(b"data: ") for e in data.split(b"\n\n") if e]
    assert events[-1] == b"[DONE]"
    out = [orjson.loads(e) for e in events[:-1]]
    for chunk in out:
        assert problems("CreateChatCompletionStreamResponse", chunk) == [], chunk
    return out


async def refused(http: aiohttp.ClientSession, url: str, **fields: Any) -> dict[str, Any]:
    async with http.post(url, json={"model": "m", "messages": ASK, **fields}) as r:
        assert r.status == 400, await r.text()
        error: dict[str, Any] = (await r.json())["error"]
    return error


def valid(name: str, arguments: str) -> None:
    errors = list(Draft202012Validator(PARAMETERS[name]).iter_errors(json.loads(arguments)))
    assert errors == [], arguments


async def test_a_user_turn_with_tools_gets_a_tool_call(
    url: str, http: aiohttp.ClientSession
) -> None:
    body = await chat(http, url, messages=ASK, tools=TOOLS, seed=1)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"] is None
    [call] = message["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"  # the one the user's words name
    valid("get_weather", call["function"]["arguments"])
    # The name is one token, the arguments' JSON one per four characters.
    arguments = call["function"]["arguments"]
    assert body["usage"]["completion_tokens"] == 1 + -(-len(arguments) // 4)


async def test_a_streamed_tool_call_is_the_same_call_in_openais_chunks(
    url: str, http: aiohttp.ClientSession
) -> None:
    whole = await chat(http, url, messages=ASK, tools=TOOLS, seed=3)
    streamed = await chunks(http, url, messages=ASK, tools=TOOLS, seed=3)
    first = streamed[0]["choices"][0]["delta"]
    assert first["role"] == "assistant" and first["content"] is None
    assert first["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": ""}
    fragments = [c for c in streamed[1:-2] if c["choices"][0]["delta"].get("tool_calls")]
    assert len(fragments) > 3  # the arguments arrive in pieces
    expected = [
        {"id": c["id"], **c["function"]} for c in whole["choices"][0]["message"]["tool_calls"]
    ]
    assert tool_calls_of(streamed) == expected
    finals = [c["choices"][0]["finish_reason"] for c in streamed if c["choices"]]
    assert finals[-1] == "tool_calls" and set(finals[:-1]) == {None}
    assert streamed[-2]["choices"][0]["delta"] == {}
    assert streamed[-1]["choices"] == []
    assert streamed[-1]["usage"]["completion_tokens"] == whole["usage"]["completion_tokens"]
    assert whole["usage"]["completion_tokens"] == len(fragments) + 1


async def test_parallel_calls_for_every_tool_the_user_names(
    url: str, http: aiohttp.ClientSession
) -> None:
    asked = [{"role": "user", "content": "Call get_time and get_weather for Oslo."}]
    body = await chat(http, url, messages=asked, tools=TOOLS)
    calls = body["choices"][0]["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
    assert len({c["id"] for c in calls}) == 2
    for call in calls:
        valid(call["function"]["name"], call["function"]["arguments"])
    streamed = tool_calls_of(await chunks(http, url, messages=asked, tools=TOOLS))
    assert [c["name"] for c in streamed] == ["get_weather", "get_time"]
    single = await chat(http, url, messages=asked, tools=TOOLS, parallel_tool_calls=False)
    assert len(single["choices"][0]["message"]["tool_calls"]) == 1


async def test_tool_choice_none_auto_required_and_named(
    url: str, http: aiohttp.ClientSession
) -> None:
    def names(body: dict[str, Any]) -> list[str]:
        return [c["function"]["name"] for c in body["choices"][0]["message"]["tool_calls"]]

    none = await chat(http, url, messages=ASK, tools=TOOLS, tool_choice="none")
    assert none["choices"][0]["finish_reason"] == "stop"
    assert none["choices"][0]["message"]["content"] and names(none) == []
    named = {"type": "function", "function": {"name": "get_time"}}
    forced = await chat(http, url, messages=ASK, tools=TOOLS, tool_choice=named)
    assert names(forced) == ["get_time"]
    called = {"role": "assistant", "content": None, "tool_calls": [_call("get_weather")]}
    loop = [*ASK, called, {"role": "tool", "tool_call_id": "call_1", "content": "12 C, rain"}]
    answered = await chat(http, url, messages=loop, tools=TOOLS)
    assert answered["choices"][0]["finish_reason"] == "stop"
    assert answered["choices"][0]["message"]["content"] and names(answered) == []
    again = await chat(http, url, messages=loop, tools=TOOLS, tool_choice="required")
    assert names(again) == ["get_weather"]
    # No tool named in the user's words: one tool, drawn by the seed.
    vague = [{"role": "user", "content": "help"}]
    drawn = {names(await chat(http, url, messages=vague, tools=TOOLS, seed=s))[0] for s in range(8)}
    assert drawn == {"get_weather", "get_time"}


def _call(name: str) -> dict[str, Any]:
    return {"id": "call_1", "type": "function", "function": {"name": name, "arguments": "{}"}}


async def test_tool_calls_are_a_function_of_the_seed(url: str, http: aiohttp.ClientSession) -> None:
    def calls(body: dict[str, Any]) -> Any:
        return body["choices"][0]["message"]["tool_calls"]

    first = [calls(await chat(http, url, messages=ASK, tools=TOOLS, seed=s)) for s in range(6)]
    again = [calls(await chat(http, url, messages=ASK, tools=TOOLS, seed=s)) for s in range(6)]
    assert first == again
    assert len({c[0]["function"]["arguments"] for c in first}) > 1


async def test_the_tools_and_the_calls_so_far_count_as_prompt_tokens(
    url: str, http: aiohttp.ClientSession
) -> None:
    plain = await chat(http, url, messages=ASK)
    with_tools = await chat(http, url, messages=ASK, tools=TOOLS, tool_choice="none")
    assert with_tools["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"] + 20
    called = {"role": "assistant", "content": None, "tool_calls": [_call("get_time")]}
    turn = [*ASK, called, {"role": "tool", "tool_call_id": "call_1", "content": "ok"}]
    later = await chat(http, url, messages=turn, tools=TOOLS)
    grown = later["usage"]["prompt_tokens"] - with_tools["usage"]["prompt_tokens"]
    assert grown >= len(["<|a", "ssis", "tant", "|>", "get_", "time", "({})", "<|to", "ol|>", "ok"])


async def test_max_tokens_cuts_a_tool_call_short(url: str, http: aiohttp.ClientSession) -> None:
    body = await chat(http, url, messages=ASK, tools=TOOLS, max_tokens=3, seed=1)
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3
    [call] = body["choices"][0]["message"]["tool_calls"]
    assert len(call["function"]["arguments"]) == 8
    streamed = await chunks(http, url, messages=ASK, tools=TOOLS, max_tokens=3, seed=1)
    assert tool_calls_of(streamed)[0]["arguments"] == call["function"]["arguments"]
    assert streamed[-2]["choices"][0]["finish_reason"] == "length"


async def test_json_mode_answers_a_json_object(url: str, http: aiohttp.ClientSession) -> None:
    fmt = {"type": "json_object"}
    body = await chat(http, url, messages=ASK, response_format=fmt)
    content = body["choices"][0]["message"]["content"]
    assert isinstance(json.loads(content), dict)
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == -(-len(content) // 4)
    streamed = await chunks(http, url, messages=ASK, response_format=fmt, seed=2)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in streamed if c["choices"])
    assert isinstance(json.loads(text), dict)


async def test_a_json_schema_answer_validates_against_it(
    url: str, http: aiohttp.ClientSession
) -> None:
    fmt = {
        "type": "json_schema",
        "json_schema": {"name": "forecast", "schema": WEATHER, "strict": True},
    }
    for seed in range(5):
        body = await chat(http, url, messages=ASK, response_format=fmt, seed=seed)
        valid("get_weather", body["choices"][0]["message"]["content"])
    streamed = await chunks(http, url, messages=ASK, response_format=fmt, seed=4)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in streamed if c["choices"])
    assert text == body["choices"][0]["message"]["content"]
    # With tools too: a user turn calls a tool, the answer after it is the schema's JSON.
    called = {"role": "assistant", "content": None, "tool_calls": [_call("get_weather")]}
    loop = [*ASK, called, {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    after = await chat(http, url, messages=loop, tools=TOOLS, response_format=fmt)
    valid("get_weather", after["choices"][0]["message"]["content"])


async def test_malformed_tools_and_schemas_are_400s(url: str, http: aiohttp.ClientSession) -> None:
    assert (await refused(http, url, tools={"x": 1}))["param"] == "tools"
    unknown = {"type": "function", "function": {"name": "nope"}}
    assert (await refused(http, url, tools=TOOLS, tool_choice=unknown))["param"] == "tool_choice"
    assert (await refused(http, url, tool_choice="required"))["param"] == "tool_choice"
    open_schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    strict_open = [{"type": "function", "function": {"name": "f", "parameters": open_schema}}]
    strict_open[0]["function"]["strict"] = True
    error = await refused(http, url, tools=strict_open)
    assert "additionalProperties" in error["message"]
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": open_schema}}
    fmt["json_schema"]["strict"] = True
    assert (await refused(http, url, response_format=fmt))["param"] == "response_format"
    remote = {"type": "json_schema", "json_schema": {"schema": {"$ref": "https://x/y.json"}}}
    assert "cannot be served" in (await refused(http, url, response_format=remote))["message"]
    assert (await refused(http, url, response_format={"type": "yaml"}))["param"] == (
        "response_format"
    )


async def test_the_demo_fleets_chat_models_answer_tools_and_schemas(
    sim_fleet: Callable[..., Awaitable[Fleet]], http: aiohttp.ClientSession
) -> None:
    raw = yaml.safe_load(files("swarmgate").joinpath("sim/demo_fleet.yaml").read_text())
    for server in raw["servers"]:
        server.update(port=0, speed=20)  # the demo's own profiles, twenty times faster
    fleet = await sim_fleet(raw, testing=False)
    chat_models = {"mixtral-8x7b", "hermes-2", "openchat-3.5", "phi-3-mini"}
    served = {}
    for server in raw["servers"]:
        for name in set(server["models"]) & chat_models:
            served[name] = fleet.urls[server["name"]] + "/v1/chat/completions"
    assert set(served) == chat_models
    fmt = {"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER}}
    for name, url in served.items():
        async with http.post(url, json={"model": name, "messages": ASK, "tools": TOOLS}) as r:
            body = await r.json()
        [call] = body["choices"][0]["message"]["tool_calls"]
        valid(call["function"]["name"], call["function"]["arguments"])
        async with http.post(
            url, json={"model": name, "messages": ASK, "response_format": fmt}
        ) as r:
            body = await r.json()
        valid("get_weather", body["choices"][0]["message"]["content"])
