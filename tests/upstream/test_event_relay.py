"""EventRelay: a Responses API event stream relayed unaltered, done at its final event, its
usage read from the final response."""

from __future__ import annotations

import json

import pytest

from swarmgate.types import Usage
from swarmgate.upstream.event_relay import EventRelay


def event(kind: str, named: bool = True, **fields: object) -> bytes:
    data = json.dumps({"type": kind, **fields}).encode()
    return (b"event: " + kind.encode() + b"\n" if named else b"") + b"data: " + data + b"\n\n"


FINAL = event(
    "response.completed", response={"id": "r", "usage": {"input_tokens": 7, "output_tokens": 2}}
)
STREAM = event("response.created", response={"id": "r"}) + event(
    "response.output_text.delta",
    delta="response.completed",  # the name in a text: no end
)


def test_events_pass_unaltered_and_the_final_one_ends_with_usage() -> None:
    relay = EventRelay()
    out = relay.feed(STREAM)
    assert out == STREAM and not relay.done
    assert relay.feed(FINAL) == FINAL
    assert relay.done and relay.usage == Usage(7, 2)


@pytest.mark.parametrize("size", [1, 5, 64])
def test_split_anywhere(size: int) -> None:
    relay = EventRelay()
    data = STREAM + FINAL
    out = b"".join(relay.feed(data[i : i + size]) for i in range(0, len(data), size))
    assert out + relay.close() == data and relay.done


def test_a_server_that_names_events_only_in_their_data() -> None:
    relay = EventRelay()
    final = event("response.incomplete", named=False, response={"usage": {"input_tokens": 1}})
    relay.feed(event("response.output_text.delta", named=False, delta="response.incomplete"))
    assert not relay.done
    relay.feed(final)
    assert relay.done and relay.usage == Usage(1, 0)
