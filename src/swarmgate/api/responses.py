"""The Responses API: ``POST /v1/responses``, ``GET`` and ``DELETE /v1/responses/{id}`` and
``GET /v1/responses/{id}/input_items``.

A request runs through the very stages chat does (``Inference.serve``: authenticate, read,
parse, resolve, authorize, admit, plan, call, ``Accounting.finish``), so limits, routing,
failover and the ledger apply as they do to chat. Once the pool is known (``prepare``), the
request goes one of two ways:

- to ``/v1/responses`` itself, when the model's config lists the ``responses`` capability
  (its deployments serve the Responses API: vLLM, the simulator's ``responses`` profile);
- translated to ``/v1/chat/completions`` otherwise (``pipeline/responses.py``), its answer
  and stream translated back (``pipeline/responses_answer.py``).

Either way the gateway keeps stored responses itself (``store/responses.py``), scoped to the
key: a ``previous_response_id`` is replaced by the conversation it continues before the
request leaves, and a deployment is always sent ``store: false``, so a follow-up may land on
any deployment, translated or not.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qs

import orjson

from swarmgate.api.v1 import Inference
from swarmgate.errors import BadRequest, GatewayError, NotFound, ServiceUnavailable, StoreError
from swarmgate.pipeline.asgi import Headers, parse_json_object, read_head, send_bytes, send_error
from swarmgate.pipeline.exchange import Exchange
from swarmgate.pipeline.request import InferenceRequest, Route
from swarmgate.pipeline.responses import chat_request, input_items, new_id, skeleton
from swarmgate.pipeline.responses_answer import Keep, ResponsesAnswer
from swarmgate.store.responses import ResponseStore, StoredResponse
from swarmgate.types import ASGIScope, ModelType, Principal, Receive, Send

log = logging.getLogger("swarmgate.responses")
T = TypeVar("T")
PATH = "/v1/responses"
CAPABILITY = "responses"  # a model whose deployments serve /v1/responses natively
TRANSLATED = Route(
    "responses", "/v1/chat/completions", frozenset({ModelType.CHAT}), "input", endpoint=PATH
)
NATIVE = Route("responses", PATH, frozenset({ModelType.CHAT}), "input", endpoint=PATH, events=True)


def owner_of(principal: Principal) -> str:
    return principal.key_id or principal.subject


@dataclass(slots=True)
class Turn:
    """One ``POST /v1/responses``: the client's request, and what becomes of it."""

    store: ResponseStore | None
    answer: ResponsesAnswer  # the client's send, once the request is known to it
    payload: dict[str, Any] = field(default_factory=dict)
    items: list[dict[str, Any]] = field(default_factory=list)  # this request's input
    history: list[dict[str, Any]] = field(default_factory=list)  # the previous response's
    created_at: float = field(default_factory=time.time)

    def parse(self, route: Route, body: bytes) -> InferenceRequest:
        payload = self.payload = parse_json_object(body)
        model = payload.get("model")
        if model is not None and not isinstance(model, str):
            raise BadRequest("'model' must be a string", param="model")
        stream = payload.get("stream")
        if stream is not None and not isinstance(stream, bool):
            raise BadRequest("'stream' must be a boolean", param="stream")
        if "input" not in payload:
            raise BadRequest("'input' is a required property", param="input")
        previous = payload.get("previous_response_id")
        if previous is not None and not isinstance(previous, str):
            raise BadRequest(
                "'previous_response_id' must be a string", param="previous_response_id"
            )
        store = payload.get("store")
        if store is not None and not isinstance(store, bool):
            raise BadRequest("'store' must be a boolean", param="store")
        self.items = input_items(payload)
        request = self._translated()
        self.answer.skeleton.update(
            skeleton(payload, new_id("resp"), self.created_at, request.model or "")
        )
        return request

    def _translated(self) -> InferenceRequest:
        chat = chat_request(self.payload, [*self.history, *self.items])
        return _request(chat)

    def _native(self) -> InferenceRequest:
        upstream = {**self.payload, "input": [*self.history, *self.items], "store": False}
        upstream.pop("previous_response_id", None)
        return _request(upstream)

    async def prepare(self, x: Exchange) -> None:
        """After the pool is resolved and authorized, before admission: the conversation
        rebuilt, and the way the request goes (passed through or translated)."""
        assert x.pool is not None and x.principal is not None
        previous = self.payload.get("previous_response_id")
        if previous is not None:
            stored = await self._stored(previous, x.principal)
            self.history = stored.history
        native = CAPABILITY in x.pool.config.capabilities
        if native:
            x.route, x.request = NATIVE, self._native()
        elif self.history and x.request is not None:
            # In place: the edits model routing made to the chat request (a transform's
            # set_params, say) stay. The bytes are what admission estimates the prompt by.
            x.request.payload["messages"] = self._translated().payload["messages"]
            x.request.raw = _encoded(x.request.payload)
        answer = self.answer
        answer.native = native
        answer.skeleton["model"] = x.pool.model
        if self.store is not None and self.payload.get("store", True) is not False:
            answer.keep = self._keeper(x.principal)

    async def _stored(self, response_id: str, principal: Principal) -> StoredResponse:
        stored = None
        if self.store is not None:
            stored = await _reading(self.store.get(response_id, owner_of(principal)))
        if stored is None:
            raise NotFound(
                f"no stored response {response_id!r} for this key", param="previous_response_id"
            )
        return stored

    def _keeper(self, principal: Principal) -> Keep:
        store = self.store
        assert store is not None
        owner = owner_of(principal)

        async def keep(response: dict[str, Any]) -> None:
            response = {**response, "store": True}
            if self.payload.get("previous_response_id") is not None:
                response["previous_response_id"] = self.payload["previous_response_id"]
            items = [_with_id(i) for i in self.items]  # ids for its input_items, kept
            stored = StoredResponse(
                str(response["id"]),
                owner,
                self.created_at,
                items,
                [*self.history, *self.items],
                response,
            )
            try:
                await store.put(stored)
            except StoreError as exc:
                # The answer is the client's all the same; only a later GET will not find it.
                log.warning("response %s not stored: %s", stored.id, exc)

        return keep


class Responses:
    def __init__(self, inference: Inference, store: ResponseStore | None) -> None:
        self.inference = inference
        self.store = store

    async def create(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        x = self.inference.accounting.start(scope, TRANSLATED)
        answer = ResponsesAnswer(send, {}, None)
        turn = Turn(self.store, answer)
        await self.inference.serve(x, turn.parse, receive, answer, _error, turn.prepare)

    async def stored(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        """``GET``/``DELETE /v1/responses/{id}``, ``GET /v1/responses/{id}/input_items``."""
        head = read_head(scope)
        try:
            peer = scope.get("client")
            principal = await self.inference.authenticator.authenticate(
                head.authorization, peer[0] if peer else None, head.forwarded_for, head.request_id
            )
            rest = scope["path"].removeprefix(PATH + "/")
            response_id, _, tail = rest.partition("/")
            method = scope["method"]
            if tail not in ("", "input_items") or (tail and method == "DELETE"):
                raise NotFound(f"no route {method} {scope['path']}")
            owner = owner_of(principal)
            headers: Headers = [(b"x-request-id", head.request_id.encode())]
            if method == "DELETE":
                if self.store is None or not await _reading(self.store.delete(response_id, owner)):
                    raise _unknown(response_id)
                body = {"id": response_id, "object": "response.deleted", "deleted": True}
                await send_bytes(send, 200, orjson.dumps(body), headers)
                return
            stored = await _reading(self.store.get(response_id, owner)) if self.store else None
            if stored is None:
                raise _unknown(response_id)
            body = _input_items(stored, scope.get("query_string", b"")) if tail else stored.response
            await send_bytes(send, 200, orjson.dumps(body), headers)
        except GatewayError as exc:
            await send_error(send, exc, head.request_id)


def _request(payload: dict[str, Any]) -> InferenceRequest:
    """The upstream request; ``raw`` is its encoding (admission's estimate of the prompt
    reads it), ``edited``: the body sent is always written from the payload, as it may be
    changed again (the model's name, model routing's transforms)."""
    stream = payload.get("stream") is True
    return InferenceRequest(
        payload, _encoded(payload), payload.get("model"), stream, True, edited=True
    )


def _encoded(payload: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(payload)
    except orjson.JSONEncodeError as exc:  # e.g. nested deeper than orjson writes
        raise BadRequest(f"the request body cannot be forwarded: {exc}") from None


async def _reading(query: Awaitable[T]) -> T:
    """A read (or delete) of stored responses: an unavailable store is a 503."""
    try:
        return await query
    except StoreError as exc:
        raise ServiceUnavailable(f"stored responses are unavailable: {exc}") from exc


def _unknown(response_id: str) -> NotFound:
    return NotFound(f"no stored response {response_id!r} for this key", param="response_id")


def _with_id(item: dict[str, Any]) -> dict[str, Any]:
    """An input item as ``input_items`` lists it: with an id, a message's text as a part."""
    item = dict(item)
    item.setdefault("id", new_id("msg" if item.get("type") == "message" else "item"))
    if item.get("type") == "message":
        content = item.get("content")
        if isinstance(content, str):
            item["content"] = [{"type": "input_text", "text": content}]
        item.setdefault("status", "completed")
    return item


def _input_items(stored: StoredResponse, query: bytes = b"") -> dict[str, Any]:
    """One page of a stored response's input items, as OpenAI pages them: ``limit`` (1 to
    100, default 20), ``order`` (``desc``, the newest first, by default; or ``asc``), and
    ``after`` (an item id: the page starts past it)."""
    params = parse_qs(query.decode("latin-1"))

    def one(name: str) -> str | None:
        values = params.get(name)
        return values[-1] if values else None

    raw_limit = one("limit") or "20"
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 100:
        raise BadRequest("limit must be an integer from 1 to 100", param="limit")
    order = one("order") or "desc"
    if order not in ("asc", "desc"):
        raise BadRequest("order must be 'asc' or 'desc'", param="order")
    items = list(stored.input)
    if order == "desc":
        items.reverse()
    after = one("after")
    if after is not None:
        ids = [item.get("id") for item in items]
        if after not in ids:
            raise BadRequest(f"no input item {after!r} in this response", param="after")
        items = items[ids.index(after) + 1 :]
    page = items[: int(raw_limit)]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(items) > len(page),
    }


async def _error(send: Send, error: GatewayError, x: Exchange) -> None:
    # ``send`` is the answer's translator: errors go straight to the client.
    target = send.client if isinstance(send, ResponsesAnswer) else send
    await send_error(target, error, x.head.request_id)
