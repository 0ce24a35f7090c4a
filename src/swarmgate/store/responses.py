"""Stored responses (``responses``): what ``POST /v1/responses`` kept, read back by its owner
(``GET``/``DELETE /v1/responses/{id}``, its input items) or continued by a request naming it as
``previous_response_id``. Someone else's response is as absent as one never stored."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from swarmgate.store.schema import responses
from swarmgate.store.sql import Database


@dataclass(frozen=True, slots=True)
class StoredResponse:
    id: str
    owner: str
    created_at: float
    input: list[dict[str, Any]]  # the request's own input items
    conversation: list[dict[str, Any]]  # all the input the model was given
    response: dict[str, Any]

    @property
    def history(self) -> list[dict[str, Any]]:
        """The conversation a follow-up continues: the input, then this response's output."""
        return [*self.conversation, *self.response.get("output", [])]


class ResponseStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def put(self, stored: StoredResponse) -> None:
        async with self._db.begin() as conn:
            await conn.execute(
                sa.insert(responses).values(
                    id=stored.id,
                    owner=stored.owner,
                    created_at=stored.created_at,
                    input=stored.input,
                    conversation=stored.conversation,
                    response=stored.response,
                )
            )

    async def get(self, response_id: str, owner: str) -> StoredResponse | None:
        query = sa.select(responses).where(
            responses.c.id == response_id, responses.c.owner == owner
        )
        async with self._db.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        if row is None:
            return None
        return StoredResponse(
            row["id"],
            row["owner"],
            row["created_at"],
            row["input"],
            row["conversation"],
            row["response"],
        )

    async def delete(self, response_id: str, owner: str) -> bool:
        query = sa.delete(responses).where(
            responses.c.id == response_id, responses.c.owner == owner
        )
        async with self._db.begin() as conn:
            return bool((await conn.execute(query)).rowcount)

    async def prune(self, before: float) -> int:
        """Delete the responses stored before ``before`` (epoch seconds); how many."""
        query = sa.delete(responses).where(responses.c.created_at < before)
        async with self._db.begin() as conn:
            return int((await conn.execute(query)).rowcount or 0)
