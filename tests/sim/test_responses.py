"""The simulator's own ``/v1/responses`` (sim/responses.py): only for a model whose profile
switches it on; its answers and events valid against OpenAI's schema; the chat engine's
failures apply to it."""

from __future__ import annotations

import json

import aiohttp

from tests.openai_schema import problems
from tests.sim.helpers import StartSim

TOOL = {
    "type": "function",
    "name": "get_weather",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
}


async def test_only_a_model_with_the_switch_serves_it(
    sim: StartSim, http: aiohttp.ClientSession
) -> None:
    url = await sim({"on": {"responses": True}, "off": {}}) + "/v1/responses"
    async with http.post(url, json={"model": "off", "input": "Hi"}) as r:
        assert r.status == 404
        assert (await r.json())["error"]["code"] is not None
    async with http.post(url, json={"model": "on", "input": "Hi", "max_output_tokens": 4}) as r:
        assert r.status == 200, await r.text()
        body = await r.json()
    assert problems("Response", body) == [], body
    assert body["id"].startswith("resp_sim") and body["model"] == "on"
    assert body["usage"]["output_tokens"] == 4 and body["status"] == "incomplete"


async def test_a_streamed_function_call(sim: StartSim, http: aiohttp.ClientSession) -> None:
    url = await sim({"on": {"responses": True}}) + "/v1/responses"
    request = {"model": "on", "input": "Weather?", "tools": [TOOL], "stream": True}
    async with http.post(url, json=request) as r:
        assert r.status == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        data = await r.read()
    events = [json.loads(b.split(b"data: ", 1)[1]) for b in data.split(b"\n\n") if b]
    for event in events:
        assert problems("ResponseStreamEvent", event) == [], event
    assert events[-1]["type"] == "response.completed"
    (call,) = events[-1]["response"]["output"]
    assert call["type"] == "function_call" and json.loads(call["arguments"])["city"]


async def test_an_injected_failure_reaches_it(sim: StartSim, http: aiohttp.ClientSession) -> None:
    url = await sim({"on": {"responses": True}}) + "/v1/responses"
    headers = {"X-Sim-Fail": "error:503"}
    async with http.post(url, json={"model": "on", "input": "Hi"}, headers=headers) as r:
        assert r.status == 503
