"""Streams reach the client as they would from the upstream directly, valid by OpenAI's spec.

The gateway always asks the upstream for usage (to account every stream); a client that did
not ask must not see the usage chunk nor the ``"usage": null`` the upstream then adds to every
chunk. Every chunk is checked against OpenAI's published schema.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import urllib3

from tests.api.e2e import FAST, Processes, assert_clean_log
from tests.openai_schema import problems
from tests.plugins.processes import Gateway

ROUTES = {
    "/v1/chat/completions": (
        {"messages": [{"role": "user", "content": "hello there"}]},
        "CreateChatCompletionStreamResponse",
    ),
    # OpenAI's CreateCompletionResponse, with the nulls its streams send before the last chunk.
    "/v1/completions": ({"prompt": "hello there"}, "CompletionStreamChunk"),
}


@pytest.fixture(scope="module")
def gw(procs: Processes) -> Iterator[Gateway]:
    sim = procs.sim({"chat": {**FAST, "max_tokens_default": 5}})
    gateway = procs.gateway({"models": {"chat": {"deployments": [{"url": sim.url}]}}})
    yield gateway
    assert_clean_log(gateway)


def _events(gw: Gateway, path: str, body: dict[str, Any]) -> list[bytes]:
    response = urllib3.request(
        "POST",
        gw.url + path,
        body=orjson.dumps(body),
        headers={"Authorization": f"Bearer {gw.admin_key}", "Content-Type": "application/json"},
        preload_content=True,
    )
    assert response.status == 200, response.data
    return [
        e.removeprefix(b"data: ") for e in response.data.split(b"\n\n") if e.startswith(b"data: ")
    ]


@pytest.mark.parametrize("path", list(ROUTES))
@pytest.mark.parametrize("options", [None, {}, {"include_usage": False}])
def test_without_usage_asked_no_chunk_carries_usage(
    gw: Gateway, path: str, options: dict[str, Any] | None
) -> None:
    fields, schema = ROUTES[path]
    body: dict[str, Any] = {"model": "chat", "stream": True, **fields}
    if options is not None:
        body["stream_options"] = options
    events = _events(gw, path, body)
    assert events[-1] == b"[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert len(chunks) >= 5
    for chunk in chunks:
        assert "usage" not in chunk, chunk
        assert chunk["choices"], "a usage-only chunk the client did not ask for"
        assert problems(schema, chunk) == [], chunk


@pytest.mark.parametrize("path", list(ROUTES))
def test_with_usage_asked_the_chunks_are_the_upstreams(gw: Gateway, path: str) -> None:
    fields, schema = ROUTES[path]
    body = {"model": "chat", "stream": True, "stream_options": {"include_usage": True}, **fields}
    chunks = [orjson.loads(e) for e in _events(gw, path, body)[:-1]]
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5
    for chunk in chunks:
        assert problems(schema, chunk) == [], chunk
