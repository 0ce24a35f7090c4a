"""Deterministic tokens, text and embeddings."""

from __future__ import annotations

import base64
import math
import random
import struct

import pytest

from swarmgate.errors import BadRequest
from swarmgate.sim import text


def test_tokenize_cuts_words_into_four_character_pieces() -> None:
    assert text.tokenize("hello  big world") == ["hell", "o", "big", "worl", "d"]
    assert text.tokenize("") == []


def test_same_seed_and_prompt_give_the_same_text_others_differ() -> None:
    rng = random.Random(1)
    a = text.generate(text.request_seed(7, "prompt", rng), 20)
    b = text.generate(text.request_seed(7, "prompt", rng), 20)
    c = text.generate(text.request_seed(8, "prompt", rng), 20)
    d = text.generate(text.request_seed(7, "other", rng), 20)
    assert a == b
    assert a != c
    assert a != d
    assert len(a) == 20
    assert text.generate(text.request_seed(7, "prompt", rng), 5) == a[:5]
    assert not a[0].startswith(" ")
    assert all(t.startswith((" ", ". ")) for t in a[1:])


def test_unseeded_requests_vary() -> None:
    rng = random.Random(1)
    outputs = {tuple(text.generate(text.request_seed(None, "p", rng), 10)) for _ in range(5)}
    assert len(outputs) > 1


def test_render_chat_accepts_strings_and_parts() -> None:
    prompt = text.render_chat(
        [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url"}]},
        ]
    )
    assert "be brief" in prompt
    assert "hi\n<image_url>" in prompt


@pytest.mark.parametrize(
    "messages", [None, [], "hi", [{"content": "x"}], [{"role": "user", "content": 3}]]
)
def test_render_chat_rejects_malformed_messages(messages: object) -> None:
    with pytest.raises(BadRequest):
        text.render_chat(messages)


def test_render_inputs_accepts_every_openai_shape() -> None:
    assert text.render_inputs("a", "input") == ["a"]
    assert text.render_inputs(["a", "b"], "input") == ["a", "b"]
    assert text.render_inputs([1, 2], "input") == ["1 2"]
    assert text.render_inputs([[1], [2, 3]], "input") == ["1", "2 3"]
    for bad in (None, [], [1, "a"], 5, [True]):
        with pytest.raises(BadRequest):
            text.render_inputs(bad, "input")


def test_embeddings_are_unit_vectors_determined_by_text() -> None:
    v = text.embed("hello", 384)
    assert len(v) == 384
    assert math.fsum(x * x for x in v) == pytest.approx(1.0)
    assert v == text.embed("hello", 384)
    assert v != text.embed("hello!", 384)
    short = text.truncate(v, 16)
    assert len(short) == 16
    assert math.fsum(x * x for x in short) == pytest.approx(1.0)


def test_base64_is_little_endian_float32() -> None:
    v = text.embed("x", 8)
    decoded = struct.unpack("<8f", base64.b64decode(text.encode_base64(v)))
    assert decoded == pytest.approx(v, rel=1e-6)
