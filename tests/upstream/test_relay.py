"""The stream relay's usage handling and the usage probes used on the hot path."""

from __future__ import annotations

import itertools

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmgate.sim.tools import ToolCall
from swarmgate.sim.wire import ChunkFormat
from swarmgate.types import Usage
from swarmgate.upstream.relay import StreamRelay, has_usage, usage_object, without_null_usage


def _chunk(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


CONTENT = {"choices": [{"index": 0, "delta": {"content": "hi"}}], "usage": None}
USAGE_ONLY = {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}


def test_the_usage_only_chunk_is_counted_and_dropped_unless_asked_for() -> None:
    for wants, shown in ((False, False), (True, True)):
        relay = StreamRelay(wants_usage=wants)
        out = relay.feed(_chunk(CONTENT) + _chunk(USAGE_ONLY) + b"data: [DONE]\n\n")
        assert relay.usage == Usage(7, 3) and relay.done
        assert (b'"prompt_tokens":7' in out) is shown
        assert out.count(b"data: ") == (3 if shown else 2)


def test_a_final_event_without_its_blank_line_is_flushed_at_the_end() -> None:
    relay = StreamRelay(wants_usage=False)
    assert relay.feed(_chunk(CONTENT)) and not relay.done
    assert relay.feed(b"data: [DONE]") == b""
    assert relay.close() == b"data: [DONE]\n\n" and relay.done


def test_has_usage_only_for_an_object() -> None:
    assert has_usage(b'{"usage": {"prompt_tokens": 1}}')
    assert has_usage(b'{"usage" :\n {"prompt_tokens": 1}}')
    assert not has_usage(b'{"usage": null}')
    assert not has_usage(b'{"choices": []}')


@given(
    prompt=st.integers(0, 10**9),
    completion=st.integers(0, 10**9),
    padding=st.integers(0, 40_000),
    details=st.booleans(),
)
def test_usage_object_agrees_with_a_full_parse(
    prompt: int, completion: int, padding: int, details: bool
) -> None:
    usage: dict[str, object] = {"prompt_tokens": prompt, "completion_tokens": completion}
    if details:
        usage["prompt_tokens_details"] = {"cached_tokens": 1}
    body = orjson.dumps({"data": [{"embedding": [0.5] * (padding // 4)}], "usage": usage})
    assert usage_object(body) == Usage(prompt, completion)


def test_a_client_that_did_not_ask_for_usage_gets_no_usage_member_at_all() -> None:
    relay = StreamRelay(wants_usage=False)
    out = relay.feed(_chunk(CONTENT) + _chunk(USAGE_ONLY) + b"data: [DONE]\n\n")
    first = orjson.loads(out.split(b"\n\n")[0].removeprefix(b"data: "))
    assert first == {"choices": [{"index": 0, "delta": {"content": "hi"}}]}
    assert b"usage" not in out and relay.usage == Usage(7, 3)


def test_a_client_that_asked_for_usage_gets_the_chunks_unchanged() -> None:
    relay = StreamRelay(wants_usage=True)
    events = _chunk(CONTENT) + _chunk(USAGE_ONLY) + b"data: [DONE]\n\n"
    assert relay.feed(events) == events


@given(
    obj=st.dictionaries(
        st.sampled_from(["id", "object", "model", "choices", "system_fingerprint"]),
        st.one_of(st.none(), st.text(), st.integers(-(2**63), 2**63 - 1), st.lists(st.text())),
    ),
    spaced=st.booleans(),
    position=st.integers(0, 5),
)
def test_without_null_usage_removes_exactly_that_member(
    obj: dict[str, object], spaced: bool, position: int
) -> None:
    import json

    items = list(obj.items())
    items.insert(min(position, len(items)), ("usage", None))
    with_usage = dict(items)
    text = json.dumps(with_usage).encode() if spaced else orjson.dumps(with_usage)
    assert orjson.loads(without_null_usage(text)) == obj


def _tool_call_stream(include_usage: bool) -> bytes:
    """A tool-call stream as the simulator writes it, whose arguments hold what the relay looks
    for ("usage": null and a usage object), as JSON text inside a string."""
    fmt = ChunkFormat(chat=True, id="chatcmpl-1", created=1, model="m", include_usage=include_usage)
    call = ToolCall("call_1", "record", '{"usage": null, "x": {"usage": {"prompt_tokens": 9}}}')
    fragments = [call.arguments[i : i + 4] for i in range(0, len(call.arguments), 4)]
    events = [fmt.tool_call(0, call), *(fmt.arguments(0, f) for f in fragments)]
    events.append(fmt.finish("tool_calls"))
    if include_usage:
        events.append(fmt.usage(Usage(40, 1 + len(fragments))))
    return b"".join(events) + b"data: [DONE]\n\n"


@settings(derandomize=True, deadline=None)
@given(cuts=st.lists(st.integers(0, 2000), max_size=12))
def test_tool_call_chunks_pass_through_unaltered_and_counted(cuts: list[int]) -> None:
    upstream = _tool_call_stream(include_usage=True)  # the gateway always asks for usage
    pieces = [upstream[a:b] for a, b in itertools.pairwise([0, *sorted(cuts), len(upstream)])]
    for wants, expected in ((True, upstream), (False, _tool_call_stream(include_usage=False))):
        relay = StreamRelay(wants_usage=wants)
        out = b"".join(relay.feed(p) for p in pieces) + relay.close()
        assert out == expected
        assert relay.done and relay.usage == Usage(40, 15)
