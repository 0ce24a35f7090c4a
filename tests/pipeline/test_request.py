"""``parse``: what the gateway reads of an inference request, checked by type, with nulls
where OpenAI's published schema allows them (and nowhere else)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from swarmgate.errors import BadRequest
from swarmgate.pipeline.request import ROUTES, parse

CHAT = ROUTES["/v1/chat/completions"]
COMPLETIONS = ROUTES["/v1/completions"]
EMBEDDINGS = ROUTES["/v1/embeddings"]
MESSAGES = [{"role": "user", "content": "hi"}]


def _parse(route: Any, **body: Any) -> Any:
    return parse(route, orjson.dumps(body))


@pytest.mark.parametrize(
    ("route", "body", "param"),
    [
        (CHAT, {"messages": MESSAGES, "stream": "yes"}, "stream"),
        (CHAT, {"messages": MESSAGES, "stream": 1}, "stream"),
        (CHAT, {"messages": MESSAGES, "stream_options": {"include_usage": "x"}}, None),
        (
            CHAT,
            {"messages": MESSAGES, "stream": True, "stream_options": {"include_usage": "x"}},
            None,
        ),
        (CHAT, {"messages": MESSAGES, "stream_options": {"include_usage": 1}}, None),
        (CHAT, {"messages": MESSAGES, "stream_options": {"include_usage": None}}, None),
        (CHAT, {"messages": MESSAGES, "stream_options": []}, "stream_options"),
        (CHAT, {"messages": MESSAGES, "model": 5}, "model"),
        (CHAT, {"messages": None}, "messages"),
        (CHAT, {"messages": "hi"}, "messages"),
        (CHAT, {}, "messages"),
        (COMPLETIONS, {"prompt": 5}, "prompt"),
        (COMPLETIONS, {"prompt": {"text": "hi"}}, "prompt"),
        (COMPLETIONS, {}, "prompt"),
        (EMBEDDINGS, {"input": None}, "input"),
        (EMBEDDINGS, {"input": 5}, "input"),
    ],
)
def test_wrong_types_are_refused(route: Any, body: dict[str, Any], param: str | None) -> None:
    with pytest.raises(BadRequest) as caught:
        _parse(route, **body)
    assert caught.value.param == (param or "stream_options.include_usage")


def test_nulls_openai_allows_are_accepted() -> None:
    request = _parse(COMPLETIONS, model="m", prompt=None, stream=None, stream_options=None)
    assert request.payload["prompt"] is None and request.stream is False
    request = _parse(CHAT, model=None, messages=MESSAGES, stream=None)
    assert request.model is None and request.stream is False


@pytest.mark.parametrize("asked", [True, False])
def test_usage_is_always_asked_for_and_remembered(asked: bool) -> None:
    request = _parse(CHAT, messages=MESSAGES, stream=True, stream_options={"include_usage": asked})
    assert request.stream and request.wants_usage is asked
    assert request.payload["stream_options"] == {"include_usage": True}
    unary = _parse(CHAT, messages=MESSAGES, stream=False, stream_options={"include_usage": asked})
    assert not unary.stream and not unary.wants_usage


def test_an_edited_payload_is_encoded_and_an_unedited_one_forwarded_as_sent() -> None:
    raw = b'{"model": "m",  "messages": [], "max_tokens": 4000}'
    request = parse(ROUTES["/v1/chat/completions"], raw)
    assert request.body_for("m") is raw  # the client's own bytes: nothing changed
    request.payload["max_tokens"] = 100
    request.edited = True
    assert orjson.loads(request.body_for("m"))["max_tokens"] == 100
