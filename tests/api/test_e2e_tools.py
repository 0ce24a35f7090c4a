"""Tool calls and structured outputs end to end (issue 17, item 2): the official SDK against a
real gateway in front of a real simulator process.

Tool calls streamed and not, ``tool_choice``, a multi-turn tool loop, ``parse`` with a
pydantic model and JSON mode; every answer and chunk validated against OpenAI's published
schema; the relay passes tool-call streams through unaltered (compared byte for byte with the
simulator's own stream for the same seeded request) and the ledger counts their tokens.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from typing import Any, Literal

import openai
import pytest
import urllib3
import yaml
from openai import OpenAI
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam, ChatCompletionToolParam
from pydantic import BaseModel, Field

from tests.api.e2e import FAST, Processes, assert_clean_log
from tests.auth.e2e import wait_for
from tests.openai_schema import problems
from tests.plugins.processes import Gateway, Sim
from tests.sim.helpers import tool_calls_of

# Without a prefix cache the usage is the same on every request (no cached_tokens that the
# second of two identical requests would show), so two streams can be compared byte for byte.
MODEL = {**FAST, "prefix_cache": {"enabled": False}}


class GetWeather(BaseModel):
    """The weather in a city, over some days."""

    city: str
    unit: Literal["celsius", "fahrenheit"]
    days: int = Field(ge=1, le=7)


class Forecast(BaseModel):
    city: str
    highs: list[float] = Field(min_length=1, max_length=7)
    rain: bool
    note: str | None


WEATHER = openai.pydantic_function_tool(GetWeather, name="get_weather")
TIME: ChatCompletionToolParam = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "enum": ["UTC", "CET", "PST"]}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}
TOOLS = [WEATHER, TIME]
ASK: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What is the weather in Lisbon?"}
]


@pytest.fixture(scope="module")
def sim(procs: Processes) -> Sim:
    return procs.sim({"agent": MODEL})


@pytest.fixture(scope="module")
def gw(procs: Processes, sim: Sim) -> Iterator[Gateway]:
    gateway = procs.gateway(
        {
            "models": {"agent": {"deployments": [{"url": sim.url, "name": "agent-a"}]}},
            "ledger": {"flush_interval": 0.1},
        }
    )
    yield gateway
    assert_clean_log(gateway)


@pytest.fixture
def client(gw: Gateway) -> Iterator[OpenAI]:
    with OpenAI(base_url=gw.url + "/v1", api_key=gw.admin_key, max_retries=0, timeout=20) as c:
        yield c


def raw_stream(url: str, body: dict[str, Any], key: str | None = None) -> bytes:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    response = urllib3.request(
        "POST", url + "/v1/chat/completions", body=json.dumps(body), headers=headers, timeout=20
    )
    assert response.status == 200, response.data
    assert response.headers["content-type"].startswith("text/event-stream")
    return response.data


def events(data: bytes) -> list[dict[str, Any]]:
    parts = [e.removeprefix(b"data: ") for e in data.split(b"\n\n") if e]
    assert parts[-1] == b"[DONE]"
    chunks = [json.loads(p) for p in parts[:-1]]
    for chunk in chunks:
        assert problems("CreateChatCompletionStreamResponse", chunk) == [], chunk
    return chunks


def normalised(data: bytes) -> bytes:
    """A stream with its id and creation time (the only parts that differ between two answers
    to the same seeded request) replaced by placeholders."""
    first = json.loads(data.split(b"\n\n")[0].removeprefix(b"data: "))
    data = data.replace(json.dumps(first["id"]).encode(), b'"ID"')
    return re.sub(rb'"created":\d+', b'"created":0', data)


def ledger_rows(gw: Gateway) -> dict[str, dict[str, Any]]:
    url = yaml.safe_load(gw.config_path.read_text())["store"]["url"]
    with sqlite3.connect(url.partition(":///")[2]) as db:
        db.row_factory = sqlite3.Row
        return {row["request_id"]: dict(row) for row in db.execute("SELECT * FROM usage_ledger")}


def create(client: OpenAI, **fields: Any) -> ChatCompletion:
    """``client.chat.completions.create``, its answer checked against OpenAI's schema."""
    raw = client.chat.completions.with_raw_response.create(model="agent", **fields)
    assert problems("CreateChatCompletionResponse", raw.http_response.json()) == []
    return raw.parse()


def test_a_tool_call_through_the_gateway(client: OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="agent", messages=ASK, tools=TOOLS, seed=1
    )
    assert problems("CreateChatCompletionResponse", raw.http_response.json()) == []
    answer = raw.parse()
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather"
    GetWeather.model_validate_json(call.function.arguments)  # the strict tool's own schema
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 1 + -(-len(call.function.arguments) // 4)


@pytest.mark.parametrize("include_usage", [True, False])
def test_a_streamed_tool_call_passes_through_unaltered(
    gw: Gateway, sim: Sim, include_usage: bool
) -> None:
    asked = [{"role": "user", "content": "get_time and get_weather, please"}]
    body: dict[str, Any] = {
        "model": "agent",
        "messages": asked,
        "tools": TOOLS,
        "seed": 7,
        "stream": True,
        "stream_options": {"include_usage": include_usage},
    }
    through = raw_stream(gw.url, body, gw.admin_key)
    direct = raw_stream(sim.url, body)
    # Byte for byte what the deployment sends a client directly, but for id and timestamp;
    # when the client did not ask for usage, neither the usage chunk nor "usage": null that
    # the gateway's own request for usage made the deployment add.
    assert normalised(through) == normalised(direct)
    chunks = events(through)
    calls = tool_calls_of(chunks)
    assert [c["name"] for c in calls] == ["get_weather", "get_time"]
    GetWeather.model_validate_json(calls[0]["arguments"])
    assert json.loads(calls[1]["arguments"])["zone"] in ("UTC", "CET", "PST")
    assert chunks[-1 if not include_usage else -2]["choices"][0]["finish_reason"] == "tool_calls"
    assert ("usage" in chunks[-1]) is include_usage


def test_the_ledger_counts_a_tool_call_streams_tokens(gw: Gateway, client: OpenAI) -> None:
    streamed = {"model": "agent", "messages": ASK, "tools": TOOLS, "seed": 2, "stream": True}
    sizes = {}
    for rid, include_usage in (("tools-usage", True), ("tools-no-usage", False)):
        with client.chat.completions.with_streaming_response.create(
            **streamed,
            stream_options={"include_usage": include_usage},
            extra_headers={"X-Request-ID": rid},
        ) as response:
            chunks = events(response.read())
        arguments = tool_calls_of(chunks)[0]["arguments"]
        sizes[rid] = 1 + -(-len(arguments) // 4)  # the name, and the arguments' pieces
        if include_usage:
            assert chunks[-1]["usage"]["completion_tokens"] == sizes[rid]
    wait_for(lambda: set(sizes) <= set(ledger_rows(gw)), 10, 0.1, "the ledger rows")
    rows = ledger_rows(gw)
    for rid, size in sizes.items():
        row = rows[rid]
        assert row["streamed"] and row["status"] == 200 and not row["cut"]
        assert row["deployment"] == "agent-a"
        assert row["tokens_out"] == size  # counted also when the client did not see usage
        assert row["tokens_in"] > 50  # the tools' definitions are part of the prompt


def test_a_tool_call_stream_cut_mid_arguments_ends_in_an_error_and_is_recorded_cut(
    gw: Gateway, client: OpenAI
) -> None:
    received = []
    with pytest.raises(openai.APIError):
        stream = client.chat.completions.create(
            model="agent",
            messages=ASK,
            tools=TOOLS,
            stream=True,
            extra_headers={"X-Sim-Fail": "reset:3", "X-Request-ID": "tools-cut"},
        )
        received.extend(stream)
    # The call's opening and a first fragment of its arguments, then the stream broke.
    assert received and received[0].choices[0].delta.tool_calls
    wait_for(lambda: "tools-cut" in ledger_rows(gw), 10, 0.1, "the ledger row")
    row = ledger_rows(gw)["tools-cut"]
    assert row["cut"] and row["streamed"]


def test_the_sdks_stream_helper_parses_the_arguments(client: OpenAI) -> None:
    with client.chat.completions.stream(
        model="agent", messages=ASK, tools=[WEATHER], tool_choice="required", seed=5
    ) as stream:
        seen = list(stream)
        final = stream.get_final_completion()
    kinds = {event.type for event in seen}
    assert {"tool_calls.function.arguments.delta", "tool_calls.function.arguments.done"} <= kinds
    chunks = [
        e.chunk.model_dump(mode="json", exclude_unset=True) for e in seen if e.type == "chunk"
    ]
    assert len(chunks) > 3
    for chunk in chunks:  # as the SDK received them
        assert problems("CreateChatCompletionStreamResponse", chunk) == [], chunk
    [call] = final.choices[0].message.tool_calls or []
    assert isinstance(call.function.parsed_arguments, GetWeather)
    assert final.choices[0].finish_reason == "tool_calls"


def test_tool_choice_through_the_gateway(client: OpenAI) -> None:
    def names(**fields: Any) -> list[str]:
        answer = create(client, messages=ASK, **fields)
        return [c.function.name for c in answer.choices[0].message.tool_calls or []]

    assert names(tools=TOOLS, tool_choice="none") == []
    assert names(tools=TOOLS, tool_choice="auto") == ["get_weather"]
    named = {"type": "function", "function": {"name": "get_time"}}
    assert names(tools=TOOLS, tool_choice=named) == ["get_time"]
    both = [{"role": "user", "content": "the weather, and the time"}]
    answer = create(client, messages=both, tools=TOOLS)
    assert len(answer.choices[0].message.tool_calls or []) == 2
    single = create(client, messages=both, tools=TOOLS, parallel_tool_calls=False)
    assert len(single.choices[0].message.tool_calls or []) == 1
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="agent",
            messages=ASK,
            tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "nope"}},
        )
    assert refused.value.body["param"] == "tool_choice"  # type: ignore[index]


def run_tool(name: str, arguments: str) -> str:
    if name == "get_weather":
        ask = GetWeather.model_validate_json(arguments)
        return f"{ask.days} days of sun in {ask.city}"
    return f"12:00 {json.loads(arguments)['zone']}"


@pytest.mark.parametrize("stream", [False, True])
def test_a_multi_turn_tool_loop(client: OpenAI, stream: bool) -> None:
    messages: list[Any] = [
        {"role": "system", "content": "You are a helpful agent."},
        {"role": "user", "content": "What is the weather in Lisbon, and the time there?"},
    ]
    prompts = []
    for _ in range(4):
        if stream:
            with client.chat.completions.stream(
                model="agent",
                messages=messages,
                tools=TOOLS,
                stream_options={"include_usage": True},
            ) as s:
                answer = s.get_final_completion()
        else:
            answer = create(client, messages=messages, tools=TOOLS)
        assert answer.usage is not None
        prompts.append(answer.usage.prompt_tokens)
        message = answer.choices[0].message
        if not message.tool_calls:
            break
        messages.append(message.model_dump(exclude_none=True, exclude={"parsed"}))
        for call in message.tool_calls:
            result = run_tool(call.function.name, call.function.arguments)
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
    else:
        pytest.fail("the model never answered after its tool calls")
    assert answer.choices[0].finish_reason == "stop"
    assert message.content
    # One turn of two calls, then the answer in text.
    assert [m["role"] for m in messages[2:]] == ["assistant", "tool", "tool"]
    assert prompts == sorted(prompts) and len(set(prompts)) == len(prompts)


def test_parse_with_a_pydantic_model(client: OpenAI) -> None:
    for seed in range(3):
        raw = client.chat.completions.with_raw_response.parse(
            model="agent", messages=ASK, response_format=Forecast, seed=seed
        )
        assert problems("CreateChatCompletionResponse", raw.http_response.json()) == []
        answer = raw.parse()
        parsed = answer.choices[0].message.parsed
        assert isinstance(parsed, Forecast)
        assert 1 <= len(parsed.highs) <= 7
    with client.chat.completions.stream(
        model="agent", messages=ASK, response_format=Forecast, seed=0
    ) as stream:
        final = stream.get_final_completion()
    assert isinstance(final.choices[0].message.parsed, Forecast)


def test_json_mode(client: OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="agent", messages=ASK, response_format={"type": "json_object"}
    )
    assert problems("CreateChatCompletionResponse", raw.http_response.json()) == []
    content = raw.parse().choices[0].message.content
    assert content is not None and isinstance(json.loads(content), dict)


def test_a_strict_schema_openai_would_refuse_is_a_400(client: OpenAI) -> None:
    loose = {
        "type": "json_schema",
        "json_schema": {
            "name": "loose",
            "strict": True,
            "schema": {"type": "object", "properties": {"a": {"type": "string"}}},
        },
    }
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="agent", messages=ASK, response_format=loose)  # type: ignore[arg-type]
    assert "additionalProperties" in refused.value.message
