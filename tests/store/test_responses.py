"""ResponseStore: stored responses in and out, each readable only by its owner, on both
engines."""

from __future__ import annotations

import pytest

from swarmgate.store.responses import ResponseStore, StoredResponse
from swarmgate.store.sql import Database

ASK = {"type": "message", "role": "user", "content": "Weather?"}
CALL = {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{}"}


@pytest.fixture
def responses(database: Database) -> ResponseStore:
    return ResponseStore(database)


def stored(response_id: str, owner: str = "k1") -> StoredResponse:
    body = {"id": response_id, "object": "response", "output": [CALL], "ünïcode": "✓"}
    return StoredResponse(response_id, owner, 1.5, [ASK], [ASK], body)


async def test_a_response_is_read_back_whole_by_its_owner(responses: ResponseStore) -> None:
    await responses.put(stored("resp_1"))
    assert await responses.get("resp_1", "k1") == stored("resp_1")


async def test_another_owner_sees_nothing_and_deletes_nothing(responses: ResponseStore) -> None:
    await responses.put(stored("resp_1"))
    assert await responses.get("resp_1", "k2") is None
    assert await responses.delete("resp_1", "k2") is False
    assert await responses.get("resp_1", "k1") is not None


async def test_delete_says_whether_there_was_a_row(responses: ResponseStore) -> None:
    await responses.put(stored("resp_1"))
    assert await responses.delete("resp_1", "k1") is True
    assert await responses.delete("resp_1", "k1") is False
    assert await responses.get("resp_1", "k1") is None


def test_the_history_is_the_conversation_then_the_output() -> None:
    assert stored("resp_1").history == [ASK, CALL]
