"""The Responses API ↔ chat completions translation (pipeline/responses.py), on its own: the
chat request built from a Responses request, and the ``Response`` built from a chat answer,
validated against OpenAI's published schema."""

from __future__ import annotations

from typing import Any

import pytest

from swarmgate.errors import BadRequest, UpstreamError
from swarmgate.pipeline.responses import (
    chat_request,
    input_items,
    response_of,
    skeleton,
    usage_of,
)
from swarmgate.types import Usage
from tests.openai_schema import problems

TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    "strict": True,
}


def chat(**payload: Any) -> dict[str, Any]:
    return chat_request(payload, input_items(payload))


def test_a_text_input_is_one_user_message_after_the_instructions() -> None:
    out = chat(model="m", input="Hi", instructions="Be brief.")
    assert out["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    assert out["model"] == "m" and "stream" not in out


def test_items_become_messages_tool_calls_and_tool_outputs() -> None:
    items = [
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "Weather "},
                {"type": "input_text", "text": "now?"},
            ],
        },
        {
            "type": "function_call",
            "call_id": "c1",
            "name": "get_weather",
            "arguments": '{"city":"A"}',
        },
        {
            "type": "function_call",
            "call_id": "c2",
            "name": "get_weather",
            "arguments": '{"city":"B"}',
        },
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        {"type": "function_call_output", "call_id": "c2", "output": "rain"},
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Done."}],
        },
        {"type": "reasoning", "summary": []},
    ]
    messages = chat(model="m", input=items)["messages"]
    assert messages[0] == {"role": "user", "content": "Weather now?"}
    # Consecutive calls are one assistant message, as chat has a parallel tool call.
    assert messages[1]["role"] == "assistant" and messages[1]["content"] is None
    assert [c["id"] for c in messages[1]["tool_calls"]] == ["c1", "c2"]
    assert messages[1]["tool_calls"][1]["function"] == {
        "name": "get_weather",
        "arguments": '{"city":"B"}',
    }
    assert messages[2:4] == [
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "c2", "content": "rain"},
    ]
    assert messages[4] == {"role": "assistant", "content": "Done."}
    assert len(messages) == 5  # the reasoning item has no place in chat


def test_an_image_part_stays_a_part() -> None:
    content = [
        {"type": "input_text", "text": "What is it?"},
        {"type": "input_image", "image_url": "data:image/png;base64,AA", "detail": "low"},
    ]
    (message,) = chat(model="m", input=[{"role": "user", "content": content}])["messages"]
    assert message["content"][1] == {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64,AA", "detail": "low"},
    }


def test_tools_choice_format_and_sampling_are_translated() -> None:
    fmt = {"type": "json_schema", "name": "f", "schema": {"type": "object"}, "strict": True}
    out = chat(
        model="m",
        input="x",
        tools=[TOOL],
        tool_choice={"type": "function", "name": "get_weather"},
        parallel_tool_calls=False,
        text={"format": fmt},
        max_output_tokens=7,
        temperature=0.2,
        top_p=0.5,
        stream=True,
    )
    assert out["tools"] == [
        {
            "type": "function",
            "function": {k: v for k, v in TOOL.items() if k != "type"},
        }
    ]
    assert out["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert out["parallel_tool_calls"] is False
    assert out["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "f", "schema": {"type": "object"}, "strict": True},
    }
    assert (out["max_tokens"], out["temperature"], out["top_p"]) == (7, 0.2, 0.5)
    assert out["stream"] is True and out["stream_options"] == {"include_usage": True}
    assert chat(model="m", input="x", text={"format": {"type": "json_object"}})[
        "response_format"
    ] == {"type": "json_object"}
    assert "response_format" not in chat(model="m", input="x", text={"format": {"type": "text"}})


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"input": 3}, "input"),
        ({"input": "x", "tools": [{"type": "web_search"}]}, "tools"),
        ({"input": [{"type": "file_search_call", "id": "x"}]}, "input"),
        ({"input": [{"role": "user", "content": [{"type": "input_file"}]}]}, "input"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input"),
        ({"input": "x", "tool_choice": {"type": "web_search"}}, "tool_choice"),
        ({"input": "x", "text": {"format": {"type": "xml"}}}, "text.format"),
        ({"input": "x", "instructions": 3}, "instructions"),
    ],
)
def test_what_cannot_be_translated_is_a_400_naming_the_field(
    payload: dict[str, Any], param: str
) -> None:
    with pytest.raises(BadRequest) as caught:
        chat(model="m", **payload)
    assert caught.value.param == param


def answer(message: dict[str, Any], finish: str = "stop") -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {
            "prompt_tokens": 9,
            "completion_tokens": 4,
            "total_tokens": 13,
            "prompt_tokens_details": {"cached_tokens": 3},
        },
    }


def base(**payload: Any) -> dict[str, Any]:
    return skeleton({"model": "m", "input": "x", **payload}, "resp_1", 100.0, "m")


def test_a_text_answer_is_a_completed_response() -> None:
    response = response_of(answer({"role": "assistant", "content": "Hello"}), base(user="u1"))
    assert problems("Response", response) == []
    assert response["status"] == "completed" and response["user"] == "u1"
    (item,) = response["output"]
    assert item["type"] == "message" and item["content"][0]["text"] == "Hello"
    assert response["usage"]["input_tokens"] == 9
    assert response["usage"]["output_tokens"] == 4
    assert response["usage"]["input_tokens_details"]["cached_tokens"] == 3


def test_tool_calls_are_function_call_items_with_the_chat_ids() -> None:
    calls = [
        {"id": "call_1", "type": "function", "function": {"name": "a", "arguments": "{}"}},
        {"id": "call_2", "type": "function", "function": {"name": "b", "arguments": '{"x":1}'}},
    ]
    message = {"role": "assistant", "content": None, "tool_calls": calls}
    response = response_of(answer(message, "tool_calls"), base(tools=[TOOL]))
    assert problems("Response", response) == []
    assert [(i["type"], i["call_id"], i["name"], i["arguments"]) for i in response["output"]] == [
        ("function_call", "call_1", "a", "{}"),
        ("function_call", "call_2", "b", '{"x":1}'),
    ]
    assert response["tools"] == [TOOL]  # the request's parameters are echoed


def test_a_cut_answer_is_incomplete() -> None:
    response = response_of(answer({"role": "assistant", "content": "Hel"}, "length"), base())
    assert problems("Response", response) == []
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}


@pytest.mark.parametrize("body", [{}, {"choices": []}, {"choices": [{"message": 3}]}, [1]])
def test_an_answer_that_is_not_a_chat_completion_is_the_deployments_fault(body: object) -> None:
    with pytest.raises(UpstreamError):
        response_of(body, base())


def test_usage_from_counted_tokens() -> None:
    usage = usage_of(Usage(5, 6))
    assert usage is not None
    assert (usage["input_tokens"], usage["output_tokens"], usage["total_tokens"]) == (5, 6, 11)
    assert usage_of(None) is None
