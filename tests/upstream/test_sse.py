"""The SSE decoder against a plain reference model of the WHATWG algorithm, under every chunking.

``reference`` below is the spec read literally and slowly: decode the whole stream as UTF-8 with
replacement, drop one leading BOM, split lines with a regex, interpret fields. The decoder must
agree with it on any bytes, however the bytes are cut into chunks.
"""

from __future__ import annotations

import itertools
import re

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmgate.errors import UpstreamError
from swarmgate.upstream.sse import (
    DONE,
    SSEDecoder,
    SSEEvent,
    encode_event,
    encode_json_event,
)

BOM = b"\xef\xbb\xbf"


def reference(stream: bytes) -> list[SSEEvent]:
    """WHATWG "interpreting an event stream", plus our close(): a final block with data counts."""
    text = stream.decode("utf-8", "replace").removeprefix("\ufeff")
    data: list[str] = []
    event = last_id = retry = None
    events: list[SSEEvent] = []

    def dispatch() -> None:
        nonlocal event, retry
        if data:
            events.append(SSEEvent("\n".join(data).encode(), event or None, last_id, retry))
        data.clear()
        event = retry = None

    for line in re.split("\r\n|\r|\n", text):
        if line == "":
            dispatch()
        elif line.startswith(":"):
            continue
        else:
            name, colon, value = line.partition(":")
            if colon and value.startswith(" "):
                value = value[1:]
            if name == "data":
                data.append(value)
            elif name == "event":
                event = value
            elif name == "id" and "\0" not in value:
                last_id = value or None
            elif name == "retry" and re.fullmatch("[0-9]+", value):
                retry = int(value)
    dispatch()
    return events


def decode(chunks: list[bytes], max_event_bytes: int = 8 * 1024 * 1024) -> list[SSEEvent]:
    decoder = SSEDecoder(max_event_bytes)
    events = [event for chunk in chunks for event in decoder.feed(chunk)]
    return events + decoder.close()


def cut(stream: bytes, points: list[int]) -> list[bytes]:
    bounds = [0, *sorted({p % (len(stream) + 1) for p in points}), len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


# --- strategies ------------------------------------------------------------------------------

TRICKY_TEXT = st.lists(
    st.one_of(
        st.sampled_from(
            ["a", " ", ":", "é", "e\u0301", "你", "好", "😀", "👩‍👩‍👧", "\ufeff", "\0", "\t"]
        ),
        st.characters(exclude_categories=["Cs"], exclude_characters="\r\n"),
    ),
    max_size=12,
).map("".join)
FIELD_NAMES = st.sampled_from(["data", "event", "id", "retry", "", "foo", "DATA", "dat", " data"])
RETRY_VALUES = st.sampled_from([b"100", b" 3000", b"12a", b"", b" ", b"-1", "٣".encode()])
LINE_ENDS = st.sampled_from([b"\n", b"\r\n", b"\r"])


@st.composite
def sse_lines(draw: st.DrawFn) -> bytes:
    """One line of a stream: a field (with or without colon/space), a comment or a blank."""
    kind = draw(st.sampled_from(["data", "data", "field", "bare", "comment", "blank", "blank"]))
    if kind == "blank":
        line = b""
    elif kind == "comment":
        line = b":" + draw(TRICKY_TEXT).encode()
    elif kind == "bare":
        line = draw(FIELD_NAMES).encode()
    else:
        name = b"data" if kind == "data" else draw(FIELD_NAMES).encode()
        value = draw(st.one_of(TRICKY_TEXT.map(str.encode), RETRY_VALUES))
        line = name + draw(st.sampled_from([b":", b": ", b":  "])) + value
    return line + draw(LINE_ENDS)


@st.composite
def sse_streams(draw: st.DrawFn) -> bytes:
    prefix = draw(st.sampled_from([b"", b"", BOM, BOM + BOM]))
    body = b"".join(draw(st.lists(sse_lines(), max_size=25)))
    return prefix + body + draw(st.sampled_from([b"", b"\n", b"data: tail", b"\r"]))


NASTY_BYTES = st.sampled_from(
    [
        *(b"data:", b"data: ", b"\ndata: ", b"\n\n", b"event:", b"id:", b"retry:", b"1", b":"),
        *(b" ", b"\n", b"\r", b"\r\n", b"\x00", BOM, "😀".encode()),
        *(b"\xff", b"\xc3", b"\x80", b"\xe4\xb8", b"\xf0\x9f\x98", b"\xed\xa0\x80"),  # invalid
    ]
)
RAW_STREAMS = st.lists(st.one_of(NASTY_BYTES, NASTY_BYTES, st.binary(max_size=6)), max_size=60).map(
    b"".join
)


# --- property tests ----------------------------------------------------------------------------


@given(sse_streams())
def test_whole_stream_matches_the_whatwg_reference(stream: bytes) -> None:
    assert decode([stream]) == reference(stream)


@settings(max_examples=60)
@given(sse_streams())
def test_a_cut_at_every_byte_boundary_changes_nothing(stream: bytes) -> None:
    whole = decode([stream])
    for i in range(len(stream) + 1):
        assert decode([stream[:i], stream[i:]]) == whole, f"cut at {i}"
    assert decode([stream[i : i + 1] for i in range(len(stream))]) == whole


@given(sse_streams(), st.lists(st.integers(min_value=0), max_size=12))
def test_random_cuts_change_nothing(stream: bytes, points: list[int]) -> None:
    assert decode(cut(stream, points)) == decode([stream])


@given(
    st.lists(
        st.lists(
            st.one_of(
                st.sampled_from(
                    ["😀", "👍🏽", "🇯🇵", "你好", "世界", "한", "e\u0301", "ñ", "\u0300", "ß"]
                ),
                st.characters(min_codepoint=0x80, exclude_categories=["Cs"]),
            ),
            min_size=1,
            max_size=10,
        ).map("".join),
        min_size=1,
        max_size=5,
    ),
    st.lists(st.integers(min_value=0), max_size=10),
)
def test_multibyte_text_cut_across_chunks_is_reassembled_exactly(
    texts: list[str], points: list[int]
) -> None:
    stream = b"".join(encode_json_event({"content": text}) for text in texts)
    chunkings = [cut(stream, points), [stream[i : i + 1] for i in range(len(stream))]]
    for chunks in chunkings:
        events = decode(chunks)
        assert [orjson.loads(event.data)["content"] for event in events] == texts


@given(RAW_STREAMS, st.lists(st.integers(min_value=0), max_size=8))
def test_arbitrary_bytes_never_raise_and_always_yield_valid_utf8(
    stream: bytes, points: list[int]
) -> None:
    events = decode(cut(stream, points))
    for event in events:
        event.data.decode("utf-8")  # raises if invalid
    assert events == reference(stream)  # which replaces invalid sequences with U+FFFD


@given(
    st.lists(st.text(alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\r\n"))),
    st.none()
    | st.text(
        min_size=1, alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\r\n")
    ),
)
def test_encode_event_round_trips_multi_line_data(lines: list[str], event: str | None) -> None:
    data = "\n".join(lines).encode()
    encoded = encode_event(data, event)
    assert decode([encoded]) == [SSEEvent(data, event)]
    assert encoded.endswith(b"\n\n")
    assert encoded.count(b"data: ") == max(1, len(lines))


# --- examples ----------------------------------------------------------------------------------


def test_crlf_lone_cr_and_lf_are_all_line_ends() -> None:
    assert decode([b"data: a\r\ndata: b\rdata: c\n\r\n"]) == [SSEEvent(b"a\nb\nc")]


def test_cr_ending_a_chunk_dispatches_at_once_and_its_lf_is_not_a_second_blank_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r\r") == [SSEEvent(b"a")]
    assert decoder.feed(b"\ndata: b\r") == []  # the \n pairs with the \r: no empty event
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"\r\n") == [SSEEvent(b"b")]


def test_comments_unknown_fields_and_events_without_data_are_not_dispatched() -> None:
    stream = b": keep-alive\n\nfoo: bar\nevent: ping\n\n:\ndata: x\n\n"
    assert decode([stream]) == [SSEEvent(b"x")]  # event type resets at the blank line


def test_field_forms_per_whatwg() -> None:
    stream = b"data\ndata:\ndata:no-space\ndata:  two-spaces\n\n"
    assert decode([stream]) == [SSEEvent(b"\n\nno-space\n two-spaces")]


def test_a_leading_bom_is_dropped_once_even_when_split() -> None:
    assert decode([BOM + b"data: a\n\n"]) == [SSEEvent(b"a")]
    assert decode([b"\xef", b"\xbb", b"\xbfdata: a\n\n"]) == [SSEEvent(b"a")]
    assert decode([BOM + BOM + b"data: a\n\ndata: b\n\n"]) == [SSEEvent(b"b")]
    assert decode([b"data: a\n\n" + BOM + b"data: b\n\n"]) == [SSEEvent(b"a")]


def test_id_persists_event_and_retry_belong_to_their_block() -> None:
    stream = (
        b"id: 1\nevent: delta\nretry: 3000\ndata: a\n\n"
        b"data: b\n\n"
        b"id\nretry: 12a\ndata: c\n\n"
        b"id: 4\n\n"
        b"id: x\x00y\nevent:\ndata: d\n\n"
    )
    assert decode([stream]) == [
        SSEEvent(b"a", "delta", "1", 3000),
        SSEEvent(b"b", None, "1", None),
        SSEEvent(b"c", None, None, None),  # a bare id clears it; retry not all digits: ignored
        SSEEvent(b"d", None, "4", None),  # an id in a data-less block still counts; NUL: ignored
    ]


def test_invalid_utf8_becomes_replacement_characters() -> None:
    [event] = decode([b"data: a\xffb\xe4\xb8\n", b"data: \xf0\x9f\x98\x80\n\n"])
    assert event.data == "a\ufffdb\ufffd\n😀".encode()


def test_valid_non_ascii_data_passes_through_byte_for_byte() -> None:
    payload = "e\u0301 é 你好 😀".encode()  # NFD and NFC kept as they came
    assert decode([b"data: " + payload + b"\n\n"]) == [SSEEvent(payload)]


def test_close_dispatches_a_last_event_missing_its_blank_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n\ndata: b\n") == [SSEEvent(b"a")]
    assert decoder.close() == [SSEEvent(b"b")]
    assert decoder.close() == []


def test_close_takes_an_unterminated_last_line_as_complete() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: [DO") == []
    assert decoder.buffered == len(b"data: [DO")
    assert decoder.feed(b"NE]") == []
    assert decoder.close() == [SSEEvent(b"[DONE]")]
    assert decoder.buffered == 0


def test_close_without_data_dispatches_nothing_and_the_decoder_is_reusable() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"event: x\nid: 7\n: comment") == []
    assert decoder.close() == []
    assert decoder.feed(BOM + b"data: again\n\n") == [SSEEvent(b"again", None, "7")]


def test_buffered_counts_only_the_unterminated_line() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"data: 12345\ndata: 678")
    assert decoder.buffered == len(b"data: 678")
    decoder.feed(b"\n")
    assert decoder.buffered == 0


def test_an_oversized_line_raises_even_when_it_arrives_in_small_pieces() -> None:
    decoder = SSEDecoder(max_event_bytes=1000)
    decoder.feed(b"data: " + b"x" * 900)
    with pytest.raises(UpstreamError, match="upstream event too large") as caught:
        decoder.feed(b"x" * 200)
    assert caught.value.status == 502
    assert decoder.buffered == 0  # nothing is kept once the stream is given up


def test_many_data_lines_add_up_to_the_limit() -> None:
    line = b"data: " + b"y" * 99 + b"\n"
    assert len(decode([line * 10, b"\n"], max_event_bytes=1000)) == 1
    with pytest.raises(UpstreamError):
        decode([line * 11, b"\n"], max_event_bytes=1000)


def test_the_limit_applies_per_event_not_per_stream() -> None:
    event = b"data: " + b"z" * 900 + b"\n\n"
    assert len(decode([event * 50], max_event_bytes=1000)) == 50


def test_encode_event_forms() -> None:
    assert encode_event(b"x") == b"data: x\n\n"
    assert encode_event(b"") == b"data: \n\n"
    assert encode_event(b"a\nb", "error") == b"event: error\ndata: a\ndata: b\n\n"
    assert encode_event(b"a\r\nb\rc") == b"data: a\ndata: b\ndata: c\n\n"
    assert encode_event(b" lead") == b"data:  lead\n\n"
    assert decode([encode_event(b" lead")]) == [SSEEvent(b" lead")]
    with pytest.raises(ValueError, match="line break"):
        encode_event(b"x", "bad\nname")


def test_encode_json_event_is_one_data_line() -> None:
    obj = {"text": "line1\nline2\r", "n": [1, 2]}
    encoded = encode_json_event(obj)
    assert encoded.startswith(b"data: {") and encoded.endswith(b"}\n\n")
    assert encoded.count(b"\n") == 2
    [event] = decode([encoded])
    assert orjson.loads(event.data) == obj
    assert decode([DONE]) == [SSEEvent(b"[DONE]")]


# --- real-world streams ------------------------------------------------------------------------

# api.openai.com /v1/chat/completions, stream=true, stream_options.include_usage=true (2025 shape)
OPENAI_STREAM = (
    b'data: {"id":"chatcmpl-C4mBz8tQeXkq1vLs0Yf3nR2aWd9Hp","object":"chat.completion.chunk",'
    b'"created":1754812345,"model":"gpt-4o-mini-2024-07-18","service_tier":"default",'
    b'"system_fingerprint":"fp_560af6e559","choices":[{"index":0,"delta":{"role":"assistant",'
    b'"content":"","refusal":null},"logprobs":null,"finish_reason":null}],"usage":null,'
    b'"obfuscation":"8kT2"}\n\n'
    b'data: {"id":"chatcmpl-C4mBz8tQeXkq1vLs0Yf3nR2aWd9Hp","object":"chat.completion.chunk",'
    b'"created":1754812345,"model":"gpt-4o-mini-2024-07-18","service_tier":"default",'
    b'"system_fingerprint":"fp_560af6e559","choices":[{"index":0,"delta":{"content":"Hello"},'
    b'"logprobs":null,"finish_reason":null}],"usage":null,"obfuscation":"Zq3LxW"}\n\n'
    b'data: {"id":"chatcmpl-C4mBz8tQeXkq1vLs0Yf3nR2aWd9Hp","object":"chat.completion.chunk",'
    b'"created":1754812345,"model":"gpt-4o-mini-2024-07-18","service_tier":"default",'
    b'"system_fingerprint":"fp_560af6e559","choices":[{"index":0,"delta":{"content":" \\u2014 '
    b'caf\\u00e9 \\ud83d\\ude00!"},"logprobs":null,"finish_reason":null}],"usage":null,'
    b'"obfuscation":"p"}\n\n'
    b'data: {"id":"chatcmpl-C4mBz8tQeXkq1vLs0Yf3nR2aWd9Hp","object":"chat.completion.chunk",'
    b'"created":1754812345,"model":"gpt-4o-mini-2024-07-18","service_tier":"default",'
    b'"system_fingerprint":"fp_560af6e559","choices":[{"index":0,"delta":{},"logprobs":null,'
    b'"finish_reason":"stop"}],"usage":null,"obfuscation":"R4e"}\n\n'
    b'data: {"id":"chatcmpl-C4mBz8tQeXkq1vLs0Yf3nR2aWd9Hp","object":"chat.completion.chunk",'
    b'"created":1754812345,"model":"gpt-4o-mini-2024-07-18","service_tier":"default",'
    b'"system_fingerprint":"fp_560af6e559","choices":[],"usage":{"prompt_tokens":12,'
    b'"completion_tokens":6,"total_tokens":18,"prompt_tokens_details":{"cached_tokens":0,'
    b'"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,'
    b'"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"obfuscation":"w1"}\n\n'
    b"data: [DONE]\n\n"
)

# vLLM's OpenAI server: raw UTF-8 (no \u escapes), stop_reason, a usage chunk with no choices
VLLM_STREAM = (
    b'data: {"id":"chatcmpl-5b1e0c9d6a4f4e2c8f3a7d1b2c3e4f50","object":"chat.completion.chunk",'
    b'"created":1754812400,"model":"Qwen/Qwen2.5-0.5B-Instruct","choices":[{"index":0,'
    b'"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}\n\n'
    + 'data: {"id":"chatcmpl-5b1e0c9d6a4f4e2c8f3a7d1b2c3e4f50","object":"chat.completion.chunk",'
    '"created":1754812400,"model":"Qwen/Qwen2.5-0.5B-Instruct","choices":[{"index":0,'
    '"delta":{"content":"你好"},"logprobs":null,"finish_reason":null}]}\n\n'.encode()
    + 'data: {"id":"chatcmpl-5b1e0c9d6a4f4e2c8f3a7d1b2c3e4f50","object":"chat.completion.chunk",'
    '"created":1754812400,"model":"Qwen/Qwen2.5-0.5B-Instruct","choices":[{"index":0,'
    '"delta":{"content":"，世界 👋"},"logprobs":null,"finish_reason":null}]}\n\n'.encode()
    + b'data: {"id":"chatcmpl-5b1e0c9d6a4f4e2c8f3a7d1b2c3e4f50","object":"chat.completion.chunk",'
    b'"created":1754812400,"model":"Qwen/Qwen2.5-0.5B-Instruct","choices":[{"index":0,'
    b'"delta":{"content":""},"logprobs":null,"finish_reason":"stop","stop_reason":null}]}\n\n'
    b'data: {"id":"chatcmpl-5b1e0c9d6a4f4e2c8f3a7d1b2c3e4f50","object":"chat.completion.chunk",'
    b'"created":1754812400,"model":"Qwen/Qwen2.5-0.5B-Instruct","choices":[],'
    b'"usage":{"prompt_tokens":20,"total_tokens":25,"completion_tokens":5}}\n\n'
    b"data: [DONE]\n\n"
)


def content_of(events: list[SSEEvent]) -> str:
    assert events[-1].data == b"[DONE]"
    chunks = [orjson.loads(event.data) for event in events[:-1]]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])


@pytest.mark.parametrize(
    ("stream", "text"),
    [(OPENAI_STREAM, "Hello — café 😀!"), (VLLM_STREAM, "你好，世界 👋")],
    ids=["openai", "vllm"],
)
@pytest.mark.parametrize("size", [1, 7, 64, 100_000])
def test_real_streams_decode_and_forward_byte_identical(
    stream: bytes, text: str, size: int
) -> None:
    events = decode([stream[i : i + size] for i in range(0, len(stream), size)])
    assert content_of(events) == text
    assert all(event.event is None and event.id is None for event in events)
    # the gateway re-emits what it decoded: the client must get the upstream's bytes unchanged
    assert b"".join(encode_event(event.data) for event in events) == stream


def test_tgi_style_data_without_a_space() -> None:
    stream = b'data:{"token":{"text":" Hi"}}\n\ndata:{"token":{"text":"!"}}\n\n'
    assert [orjson.loads(e.data)["token"]["text"] for e in decode([stream])] == [" Hi", "!"]


def test_llama_cpp_error_field_is_an_unknown_field_and_never_an_event() -> None:
    stream = b'data: {"choices":[]}\n\nerror: {"code":500,"message":"slot died"}\n\n'
    assert decode([stream]) == [SSEEvent(b'{"choices":[]}')]
