"""An agent framework as a client (issue 17, item 4): the OpenAI Agents SDK runs a tool-using
agent against ``swarmgate demo`` (a real process: the gateway in front of its simulated
fleet), configured as a new user would: the gateway's base URL and key, a demo model named,
tracing export turned off, everything else on its defaults (which use the Responses API).
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from agents import (
    Agent,
    OpenAIChatCompletionsModel,
    Runner,
    function_tool,
    set_default_openai_client,
    set_tracing_disabled,
)
from openai import AsyncOpenAI

from tests.plugins.processes import (
    SWARMGATE,
    Process,
    free_port,
    new_admin_key,
    spawn,
    wait_healthy,
)

pytestmark = pytest.mark.slow
MODEL = "phi-3-mini"  # the demo's fastest


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Process, str]]:
    root = tmp_path_factory.mktemp("agents")
    port, key, log = free_port(), new_admin_key(), root / "demo.log"
    proc = spawn([*SWARMGATE, "demo", "--port", str(port), "--key", key], log)
    process = Process(proc, log, f"http://127.0.0.1:{port}")
    try:
        wait_healthy(process, "/health/ready")
        yield process, key
    finally:
        process.stop(signal.SIGINT)
    assert "Traceback" not in process.output()


def weather_agent(calls: list[str], model: str | OpenAIChatCompletionsModel = MODEL) -> Agent:
    @function_tool
    def get_weather(city: str) -> str:
        """The weather now in a city."""
        calls.append(city)
        return f"It is sunny in {city}, 24C."

    return Agent(
        name="Weather",
        instructions="Answer with the weather, using the tool.",
        tools=[get_weather],
        model=model,
    )


@pytest.fixture
async def client(demo: tuple[Process, str]) -> AsyncIterator[AsyncOpenAI]:
    process, key = demo
    set_tracing_disabled(True)  # no export of traces to the internet
    async with AsyncOpenAI(base_url=process.url + "/v1", api_key=key, max_retries=0) as client:
        set_default_openai_client(client)
        yield client


async def test_an_agent_calls_its_tool_and_answers(client: AsyncOpenAI) -> None:
    calls: list[str] = []
    result = await Runner.run(weather_agent(calls), "What is the weather in Lisbon?")
    assert len(calls) == 1 and calls[0]  # the tool ran once, with the model's argument
    kinds = [item.type for item in result.new_items]
    assert kinds == ["tool_call_item", "tool_call_output_item", "message_output_item"]
    assert isinstance(result.final_output, str) and result.final_output
    # The default model is the Responses API's: every turn went through /v1/responses.
    assert all(r.response_id and r.response_id.startswith("resp_") for r in result.raw_responses)


async def test_a_streamed_agent_run(client: AsyncOpenAI) -> None:
    calls: list[str] = []
    result = Runner.run_streamed(weather_agent(calls), "Weather in Porto?")
    kinds = [event.type async for event in result.stream_events()]
    assert "raw_response_event" in kinds and "run_item_stream_event" in kinds
    assert len(calls) == 1
    assert isinstance(result.final_output, str) and result.final_output


async def test_an_agent_on_chat_completions(client: AsyncOpenAI) -> None:
    calls: list[str] = []
    model = OpenAIChatCompletionsModel(model=MODEL, openai_client=client)
    result = await Runner.run(weather_agent(calls, model), "What is the weather in Faro?")
    assert len(calls) == 1
    assert isinstance(result.final_output, str) and result.final_output


def test_the_readme_names_the_recipe() -> None:
    docs = (Path(__file__).parents[2] / "docs" / "agents.md").read_text()
    assert "set_tracing_disabled(True)" in docs and "set_default_openai_client" in docs
