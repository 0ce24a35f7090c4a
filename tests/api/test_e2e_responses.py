"""The Responses API end to end (issue 17, item 3): the official SDK's ``client.responses``
against a real gateway in front of real simulator processes, one whose model serves only chat
completions (translated) and one whose profile serves ``/v1/responses`` itself (passed
through). Every answer and event is validated against OpenAI's published schema.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import urllib3
from openai import OpenAI
from openai.types.responses import Response
from pydantic import BaseModel

from tests.api.e2e import FAST, Processes, assert_clean_log
from tests.api.test_e2e_tools import GetWeather, ledger_rows
from tests.auth.e2e import create_key, wait_for
from tests.openai_schema import problems
from tests.plugins.processes import Gateway, Sim

MODEL = {**FAST, "prefix_cache": {"enabled": False}}
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city, over some days.",
    "parameters": {**GetWeather.model_json_schema(), "additionalProperties": False},
    "strict": True,
}
# Both ways: "chat" is translated, "native" passed through to the simulator's Responses API.
MODELS = ("chat", "native")


@pytest.fixture(scope="module")
def sim(procs: Processes) -> Sim:
    return procs.sim({"chat": MODEL, "native": {**MODEL, "responses": True}})


@pytest.fixture(scope="module")
def gw(procs: Processes, sim: Sim) -> Iterator[Gateway]:
    gateway = procs.gateway(
        {
            "models": {
                "chat": {"deployments": [{"url": sim.url, "name": "chat-a"}]},
                "native": {
                    "capabilities": ["responses"],
                    "deployments": [{"url": sim.url, "name": "native-a"}],
                },
            },
            "ledger": {"flush_interval": 0.1},
        }
    )
    yield gateway
    assert_clean_log(gateway)


@pytest.fixture
def client(gw: Gateway) -> Iterator[OpenAI]:
    with OpenAI(base_url=gw.url + "/v1", api_key=gw.admin_key, max_retries=0, timeout=20) as c:
        yield c


def create(client: OpenAI, **fields: Any) -> Response:
    """``client.responses.create``, its answer checked against OpenAI's schema."""
    raw = client.responses.with_raw_response.create(**fields)
    body = raw.http_response.json()
    assert problems("Response", body) == [], body
    return raw.parse()


def sse(data: bytes) -> list[dict[str, Any]]:
    """A Responses stream's events, each checked against OpenAI's schema and its event name."""
    out = []
    for block in data.split(b"\n\n"):
        if not block.strip():
            continue
        lines = dict(line.split(b": ", 1) for line in block.split(b"\n"))
        event = json.loads(lines[b"data"])
        assert lines[b"event"].decode() == event["type"]
        assert problems("ResponseStreamEvent", event) == [], event
        out.append(event)
    return out


def raw_stream(gw: Gateway, body: dict[str, Any]) -> bytes:
    response = urllib3.request(
        "POST",
        gw.url + "/v1/responses",
        body=json.dumps({**body, "stream": True}),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {gw.admin_key}"},
        timeout=20,
    )
    assert response.status == 200, response.data
    assert response.headers["content-type"].startswith("text/event-stream")
    return response.data


@pytest.mark.parametrize("model", MODELS)
def test_a_text_response(client: OpenAI, model: str) -> None:
    response = create(client, model=model, input="Tell me about the swarm.", store=False)
    assert response.status == "completed"
    assert response.model == model
    # The simulator's own ids: the request went to its /v1/responses, not its chat.
    assert response.id.startswith("resp_sim") == (model == "native")
    assert response.output_text
    assert response.output[0].type == "message"
    assert response.usage is not None
    assert response.usage.output_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens


@pytest.mark.parametrize("model", MODELS)
def test_instructions_and_max_output_tokens(client: OpenAI, model: str) -> None:
    response = create(
        client, model=model, instructions="Be brief.", input="Hello", max_output_tokens=3
    )
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage is not None and response.usage.output_tokens == 3


@pytest.mark.parametrize("model", MODELS)
def test_a_function_call_and_its_output(client: OpenAI, model: str) -> None:
    ask = [{"role": "user", "content": "What is the weather in Lisbon?"}]
    first = create(client, model=model, input=ask, tools=[WEATHER], tool_choice="required")
    calls = [item for item in first.output if item.type == "function_call"]
    assert [c.name for c in calls] == ["get_weather"]
    arguments = GetWeather.model_validate_json(calls[0].arguments)  # valid against the schema
    assert arguments.days >= 1
    # The tool's output, as an agent sends it back: the call, then its output.
    follow = [
        *ask,
        {
            "type": "function_call",
            "call_id": calls[0].call_id,
            "name": "get_weather",
            "arguments": calls[0].arguments,
        },
        {"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny, 24C"},
    ]
    second = create(client, model=model, input=follow, tools=[WEATHER])
    assert [item.type for item in second.output] == ["message"]
    assert second.output_text


@pytest.mark.parametrize("model", MODELS)
def test_structured_output_with_parse(client: OpenAI, model: str) -> None:
    class Forecast(BaseModel):
        city: str
        rain: bool

    parsed = client.responses.parse(model=model, input="Forecast?", text_format=Forecast)
    assert isinstance(parsed.output_parsed, Forecast)


@pytest.mark.parametrize("model", MODELS)
def test_a_streamed_text_response(gw: Gateway, model: str) -> None:
    events = sse(raw_stream(gw, {"model": model, "input": "Tell me about the swarm."}))
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    done = events[-1]["response"]
    assert done["output"][0]["content"][0]["text"] == text
    assert done["usage"]["output_tokens"] > 0


@pytest.mark.parametrize("model", MODELS)
def test_a_streamed_function_call(gw: Gateway, model: str) -> None:
    body = {"model": model, "input": "Weather?", "tools": [WEATHER], "tool_choice": "required"}
    events = sse(raw_stream(gw, body))
    kinds = [e["type"] for e in events]
    assert "response.function_call_arguments.delta" in kinds
    deltas = "".join(
        e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"
    )
    (done,) = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert done["arguments"] == deltas
    GetWeather.model_validate_json(deltas)
    assert events[-1]["type"] == "response.completed"


@pytest.mark.parametrize("model", MODELS)
def test_the_sdks_stream_helper(client: OpenAI, model: str) -> None:
    with client.responses.stream(model=model, input="Tell me about the swarm.") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert deltas
    assert final.output_text == "".join(deltas)
    assert final.status == "completed"


@pytest.mark.parametrize("model", MODELS)
def test_stored_responses_continue_and_are_read_back(client: OpenAI, model: str) -> None:
    first = create(client, model=model, input="My name is Ada.")
    got = client.responses.retrieve(first.id)
    assert problems("Response", got.model_dump(mode="json", exclude_unset=True)) == []
    assert got.id == first.id and got.output_text == first.output_text
    items = client.responses.input_items.list(first.id)
    assert [i.type for i in items.data] == ["message"]
    assert client.responses.input_items.list(first.id).data == items.data  # ids kept
    second = create(client, model=model, input="What is my name?", previous_response_id=first.id)
    assert second.previous_response_id == first.id
    # The model was given the conversation: the first input and output before the new input.
    alone = create(client, model=model, input="What is my name?", store=False)
    assert second.usage is not None and alone.usage is not None and first.usage is not None
    assert second.usage.input_tokens > alone.usage.input_tokens + first.usage.output_tokens
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    # The follow-up was stored, with its own input only.
    items = client.responses.input_items.list(second.id)
    (newest, *_) = items.data
    assert newest.type == "message" and newest.content[0].text == "What is my name?"


def test_input_items_are_paged_as_openai_pages_them(client: OpenAI) -> None:
    said = [f"Line {n}." for n in range(5)]
    stored = create(
        client, model="chat", input=[{"role": "user", "content": text} for text in said]
    )
    newest_first = client.responses.input_items.list(stored.id, limit=2)
    assert [i.content[0].text for i in newest_first.data] == said[::-1][:2]
    assert newest_first.has_more
    # The SDK follows ``after`` from page to page: every item once, in order.
    every = [i.content[0].text for i in client.responses.input_items.list(stored.id, limit=2)]
    assert every == said[::-1]
    oldest = client.responses.input_items.list(stored.id, order="asc", limit=10)
    assert [i.content[0].text for i in oldest.data] == said and not oldest.has_more
    with pytest.raises(openai.BadRequestError):
        client.responses.input_items.list(stored.id, limit=0)


def test_a_response_not_stored_is_not_found(client: OpenAI) -> None:
    response = create(client, model="chat", input="Hi", store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        create(client, model="chat", input="Hi", previous_response_id=response.id)


def test_a_stored_response_belongs_to_its_key(gw: Gateway, client: OpenAI) -> None:
    _, other = create_key(gw, name="other")
    response = create(client, model="chat", input="Hi")
    with OpenAI(base_url=gw.url + "/v1", api_key=other, max_retries=0) as stranger:
        with pytest.raises(openai.NotFoundError):
            stranger.responses.retrieve(response.id)
        with pytest.raises(openai.NotFoundError):
            stranger.responses.delete(response.id)
        with pytest.raises(openai.NotFoundError):
            stranger.responses.create(model="chat", input="?", previous_response_id=response.id)
    assert client.responses.retrieve(response.id).id == response.id


def test_a_tool_chat_cannot_translate_is_a_400(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="web_search"):
        client.responses.create(model="chat", input="Hi", tools=[{"type": "web_search"}])


@pytest.mark.parametrize("model", MODELS)
def test_the_ledger_counts_responses(gw: Gateway, client: OpenAI, model: str) -> None:
    raw = client.responses.with_raw_response.create(model=model, input="Hi", store=False)
    request_id = raw.http_response.headers["x-request-id"]
    usage = raw.parse().usage
    assert usage is not None
    wait_for(lambda: request_id in ledger_rows(gw), timeout=10, what="the ledger's record")
    row = ledger_rows(gw)[request_id]
    assert row["route"] == "/v1/responses"
    assert row["model"] == model
    assert (row["tokens_in"], row["tokens_out"]) == (usage.input_tokens, usage.output_tokens)
    assert row["status"] == 200


@pytest.mark.parametrize("model", MODELS)
def test_a_stream_cut_mid_arguments_ends_in_an_error_and_is_recorded_cut(
    gw: Gateway, model: str
) -> None:
    request_id = f"responses-cut-{model}"
    body = {"model": model, "input": "Weather?", "tools": [WEATHER], "stream": True}
    response = urllib3.request(
        "POST",
        gw.url + "/v1/responses",
        body=json.dumps(body),
        headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {gw.admin_key}",
            "X-Sim-Fail": "reset:3",
            "X-Request-ID": request_id,
        },
        timeout=20,
    )
    assert response.status == 200
    blocks = [b for b in response.data.split(b"\n\n") if b.strip()]
    first = [json.loads(b.split(b"data: ", 1)[1]) for b in blocks[:-1]]
    assert first[0]["type"] == "response.created"
    assert not any(e["type"] == "response.completed" for e in first)
    last = json.loads(blocks[-1].split(b"data: ", 1)[1])
    # The gateway's own end of a broken stream: an error event (translated), or, passed
    # through, OpenAI's error object that the SDK raises.
    assert last.get("type") == "error" or "error" in last, last
    wait_for(lambda: request_id in ledger_rows(gw), 10, 0.1, "the ledger row")
    row = ledger_rows(gw)[request_id]
    assert row["cut"] and row["streamed"] and row["route"] == "/v1/responses"
