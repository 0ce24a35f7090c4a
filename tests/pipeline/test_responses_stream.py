"""A chat stream re-framed as the Responses API's events (pipeline/responses_stream.py): the
event sequence, each event valid against OpenAI's schema, fed whole or split anywhere."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from swarmgate.pipeline.responses import skeleton
from swarmgate.pipeline.responses_stream import ResponseStream
from tests.openai_schema import problems


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "c",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


USAGE = {"id": "c", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3}}
TEXT = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Hel"}),
    chunk({"content": "lo"}),
    chunk({}, "stop"),
    USAGE,
]
CALLS = [
    chunk(
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "f", "arguments": ""},
                }
            ],
        }
    ),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"x"'}}]}),
    chunk(
        {
            "tool_calls": [
                {
                    "index": 1,
                    "id": "call_b",
                    "type": "function",
                    "function": {"name": "g", "arguments": "{}"},
                }
            ]
        }
    ),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}),
    chunk({}, "tool_calls"),
    USAGE,
]


def wire(chunks: list[dict[str, Any]]) -> bytes:
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + (
        b"data: [DONE]\n\n"
    )


def translate(data: bytes, cuts: list[int] | None = None) -> list[dict[str, Any]]:
    stream = ResponseStream(skeleton({"model": "m", "input": "x"}, "resp_1", 1.0, "m"))
    out = stream.start()
    at = 0
    for cut in sorted(cuts or []):
        out += stream.feed(data[at:cut])
        at = cut
    out += stream.feed(data[at:])
    assert stream.completed
    events = []
    for block in out.split(b"\n\n"):
        if block:
            name, data_line = block.split(b"\n")
            event = json.loads(data_line.removeprefix(b"data: "))
            assert name == b"event: " + event["type"].encode()
            assert problems("ResponseStreamEvent", event) == [], event
            events.append(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


def test_a_text_stream() -> None:
    events = translate(wire(TEXT))
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["delta"] for e in events if e["type"] == "response.output_text.delta"] == [
        "Hel",
        "lo",
    ]
    final = events[-1]["response"]
    assert problems("Response", final) == []
    assert final["output"][0]["content"][0]["text"] == "Hello"
    assert final["usage"]["input_tokens"] == 5 and final["usage"]["output_tokens"] == 3


def test_parallel_tool_calls_are_items_of_their_own() -> None:
    events = translate(wire(CALLS))
    added = [e["item"] for e in events if e["type"] == "response.output_item.added"]
    assert [(i["call_id"], i["name"]) for i in added] == [("call_a", "f"), ("call_b", "g")]
    deltas = [
        (e["output_index"], e["delta"])
        for e in events
        if e["type"] == "response.function_call_arguments.delta"
    ]
    assert deltas == [(0, '{"x"'), (1, "{}"), (0, ":1}")]
    done = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert [d["arguments"] for d in done] == ['{"x":1}', "{}"]
    final = events[-1]["response"]
    assert [i["arguments"] for i in final["output"]] == ['{"x":1}', "{}"]


def test_a_stream_cut_by_max_tokens_is_incomplete() -> None:
    events = translate(wire([chunk({"content": "Hi"}), chunk({}, "length"), USAGE]))
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_an_error_event_from_the_gateway_becomes_an_error_event() -> None:
    stream = ResponseStream(skeleton({"input": "x"}, "resp_1", 1.0, "m"))
    stream.start()
    error = {"error": {"message": "deployment d: broke", "type": "x", "code": "upstream_error"}}
    out = stream.feed(b"data: " + json.dumps(error).encode() + b"\n\n")
    event = json.loads(out.split(b"\n")[1].removeprefix(b"data: "))
    assert event["type"] == "error" and event["message"] == "deployment d: broke"
    assert problems("ResponseStreamEvent", event) == []
    assert not stream.completed


# Each example validates every event against the schema: slow, so fewer of them.
@settings(deadline=None, max_examples=25)
@given(st.lists(st.integers(min_value=0, max_value=len(wire(CALLS))), max_size=6))
def test_split_anywhere_the_events_are_the_same(cuts: list[int]) -> None:
    def stable(events: list[dict[str, Any]]) -> list[Any]:
        return [(e["type"], e.get("delta"), e.get("arguments")) for e in events]

    assert stable(translate(wire(CALLS), cuts)) == stable(translate(wire(CALLS)))
