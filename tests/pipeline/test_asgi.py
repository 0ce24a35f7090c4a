"""Plain-ASGI request helpers: headers in one pass, bounded bodies, disconnects."""

from __future__ import annotations

import pytest

from swarmgate.errors import PayloadTooLarge
from swarmgate.pipeline.asgi import ClientGone, read_body, read_head
from swarmgate.upstream.transport import NOT_FORWARDED


def test_read_head_joins_forwarded_for_lines_and_keeps_secrets_back() -> None:
    scope = {
        "headers": [
            (b"authorization", b"Bearer sk-sg-x"),
            (b"x-forwarded-for", b"1.1.1.1"),
            (b"x-forwarded-for", b"2.2.2.2, 3.3.3.3"),
            (b"openai-organization", b"org-1"),
            (b"x-api-key", b"k"),
            (b"traceparent", b"00-abc-def-01"),
            (b"x-request-id", b"mine-1"),
        ]
    }
    head = read_head(scope, NOT_FORWARDED)
    assert head.forwarded_for == "1.1.1.1, 2.2.2.2, 3.3.3.3"
    assert head.authorization == "Bearer sk-sg-x"
    assert head.request_id == "mine-1"
    assert head.forward == {"traceparent": "00-abc-def-01"}


async def test_read_body_bounds_and_disconnects() -> None:
    async def parts(*messages: dict[str, object]):  # type: ignore[no-untyped-def]
        queue = list(messages)

        async def receive() -> dict[str, object]:
            return queue.pop(0)

        return receive

    ok = await parts(
        {"type": "http.request", "body": b"ab", "more_body": True},
        {"type": "http.request", "body": b"cd"},
    )
    assert await read_body(ok, 10, None) == b"abcd"
    big = await parts(
        {"type": "http.request", "body": b"x" * 8, "more_body": True},
        {"type": "http.request", "body": b"x" * 8},
    )
    with pytest.raises(PayloadTooLarge):
        await read_body(big, 10, None)
    with pytest.raises(PayloadTooLarge):
        await read_body(ok, 10, 11)
    gone = await parts(
        {"type": "http.request", "body": b"ab", "more_body": True}, {"type": "http.disconnect"}
    )
    with pytest.raises(ClientGone):
        await read_body(gone, 10, None)
