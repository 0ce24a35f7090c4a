"""The inference hot path: one OpenAI request from the client to a deployment and back.

Read top to bottom: authenticate → read and check the body → resolve the model → authorize →
pick a deployment → call it (retrying another deployment only if the request never reached the
first) → stream or send the answer back → account. Nothing here awaits a database or creates a
task; the watchdog bounds every upstream wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import aiohttp
import orjson

from swarmgate.api.http import (
    SSE_HEADERS,
    ClientGone,
    DisconnectWatch,
    Headers,
    RequestHead,
    parse_json_object,
    read_body,
    read_head,
    send_bytes,
    send_error,
)
from swarmgate.auth.roles import require, scope_for_model_type
from swarmgate.errors import (
    BadRequest,
    Forbidden,
    GatewayError,
    UpstreamError,
    UpstreamTimeout,
)
from swarmgate.observability.metrics import Metrics
from swarmgate.routing.pool import Backend, Pool, Registry
from swarmgate.types import ASGIScope, Authenticator, ModelType, Principal, Receive, Send, Usage
from swarmgate.upstream.client import NOT_FORWARDED, ConnectFailed, UpstreamClient
from swarmgate.upstream.relay import StreamRelay, usage_from, usage_object
from swarmgate.upstream.sse import encode_json_event
from swarmgate.upstream.watchdog import Watchdog

# Which model types each route serves, and what it must carry.
ROUTES: dict[str, tuple[str, frozenset[ModelType], str]] = {
    "/v1/chat/completions": ("chat", frozenset({ModelType.CHAT}), "messages"),
    "/v1/completions": ("completions", frozenset({ModelType.CHAT, ModelType.COMPLETION}), "prompt"),
    "/v1/embeddings": ("embeddings", frozenset({ModelType.EMBEDDING}), "input"),
}
log = logging.getLogger("swarmgate.proxy")
RETRYABLE_ATTEMPTS = 2
LARGE_BODY = 16 * 1024  # above this, only the usage object of an answer is parsed
# Upstream response headers a client needs to back off correctly.
PASSED_BACK = (
    "retry-after",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
)


def _check_fields(payload: dict[str, Any], required: str) -> str | None:
    """Type-check only the fields the gateway itself reads; everything else is forwarded.

    Returns the requested model name (None: the default model)."""
    model = payload.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest("'model' must be a string", param="model")
    stream = payload.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise BadRequest("'stream' must be a boolean", param="stream")
    options = payload.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise BadRequest("'stream_options' must be an object", param="stream_options")
    if required not in payload:
        raise BadRequest(f"'{required}' is a required property", param=required)
    value = payload[required]
    if required == "messages" and not isinstance(value, list):
        raise BadRequest("'messages' must be an array of message objects", param="messages")
    if required in ("prompt", "input") and not isinstance(value, str | list):
        raise BadRequest(f"'{required}' must be a string or an array", param=required)
    return model


class Proxy:
    def __init__(
        self,
        registry: Registry,
        client: UpstreamClient,
        metrics: Metrics,
        authenticator: Authenticator,
        max_body_bytes: int,
    ) -> None:
        self.registry = registry
        self.client = client
        self.metrics = metrics
        self.authenticator = authenticator
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        route, types, required = ROUTES[scope["path"]]
        started = time.perf_counter()
        head = read_head(scope, NOT_FORWARDED)
        model = "-"
        status = 200
        self.metrics.in_flight.inc()
        try:
            peer = scope.get("client")
            principal = await self.authenticator.authenticate(
                head.authorization, peer[0] if peer else None, head.forwarded_for, head.request_id
            )
            body = await read_body(receive, self.max_body_bytes, head.content_length)
            payload = parse_json_object(body)
            pool = self.registry.resolve(_check_fields(payload, required), principal.allows_model)
            model = pool.model
            self._authorize(principal, pool, route, types)
            status = await self._forward(pool, payload, body, scope["path"], head, receive, send)
        except GatewayError as exc:
            status = exc.status
            await self._send_error(send, exc, head.request_id)
        except ClientGone:
            status = 499
        except Exception:
            # A bug of ours: logged with its traceback, answered in OpenAI's schema.
            log.exception("unexpected error serving %s (request %s)", route, head.request_id)
            status = 500
            error = GatewayError("internal error in the gateway; see its log for this request id")
            await self._send_error(send, error, head.request_id)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.request(route, model, status, time.perf_counter() - started)

    @staticmethod
    async def _send_error(send: Send, error: GatewayError, request_id: str) -> None:
        # The client left, or the response had already started (a server's own "response
        # already started" error): nothing more can be said to it.
        with contextlib.suppress(ClientGone, RuntimeError):
            await send_error(send, error, request_id)

    @staticmethod
    def _authorize(
        principal: Principal, pool: Pool, route: str, types: frozenset[ModelType]
    ) -> None:
        if pool.type not in types:
            raise BadRequest(
                f"model {pool.model!r} is a {pool.type} model and cannot serve /v1/{route}",
                param="model",
            )
        require(principal, scope_for_model_type(pool.type))
        if not principal.allows_model(pool.model):
            raise Forbidden(f"this key may not use model {pool.model!r}", code="model_not_allowed")

    async def _forward(
        self,
        pool: Pool,
        payload: dict[str, Any],
        raw: bytes,
        path: str,
        head: RequestHead,
        receive: Receive,
        send: Send,
    ) -> int:
        stream = payload.get("stream") is True
        wants_usage = False
        if stream:
            options = payload.get("stream_options") or {}
            wants_usage = options.get("include_usage") is True
            # Always ask for usage so every stream is accounted; the usage-only chunk is
            # dropped again below when the client did not ask for it.
            payload["stream_options"] = {**options, "include_usage": True}
        requested = payload.get("model")  # as the client sent it: `raw` carries this name
        tried: list[Backend] = []
        while True:
            backend = pool.pick(exclude=tried)
            tried.append(backend)
            if stream or requested != backend.upstream_model:
                payload["model"] = backend.upstream_model
                try:
                    body = orjson.dumps(payload)
                except orjson.JSONEncodeError as exc:  # e.g. nested deeper than orjson writes
                    raise BadRequest(f"the request body cannot be forwarded: {exc}") from None
            else:
                body = raw  # nothing to change: forward the client's bytes as they came
            headers = dict(head.forward)
            headers["content-type"] = "application/json"
            headers["x-request-id"] = head.request_id
            if backend.config.api_key:
                headers["authorization"] = "Bearer " + backend.config.api_key
            try:
                if stream:
                    return await self._stream(
                        backend, path, body, headers, head, receive, send, wants_usage
                    )
                return await self._unary(backend, path, body, headers, head, send)
            except ConnectFailed:
                self.metrics.upstream_error(backend.name, "connect")
                if len(tried) >= min(RETRYABLE_ATTEMPTS, len(pool.backends)):
                    raise

    def _response_headers(self, backend: Backend, head: RequestHead) -> Headers:
        return [(b"x-request-id", head.request_id.encode()), *backend.headers]

    def _account(self, backend: Backend, usage: Usage) -> None:
        self.metrics.tokens(backend.model, usage.prompt_tokens, usage.completion_tokens)
        price = backend.config
        cost = (
            usage.prompt_tokens * price.input_cost_per_1k
            + usage.completion_tokens * price.output_cost_per_1k
        ) / 1000
        if cost:
            self.metrics.cost(backend.model, cost)

    async def _unary(
        self,
        backend: Backend,
        path: str,
        body: bytes,
        headers: dict[str, str],
        head: RequestHead,
        send: Send,
    ) -> int:
        backend.in_flight += 1
        started = time.perf_counter()
        watchdog = Watchdog(backend.unary_timeouts or backend.timeouts)
        try:
            response = await self.client.post(backend, path, body, headers)
            watchdog.first_byte()
            async with response:
                data = await response.read()
        except asyncio.CancelledError:
            if watchdog.absorb():
                self.metrics.upstream_error(backend.name, "timeout")
                raise UpstreamTimeout(watchdog.describe()) from None
            raise
        except aiohttp.ClientError as exc:
            self.metrics.upstream_error(backend.name, "protocol")
            raise UpstreamError(
                f"deployment {backend.name} broke off the response: {type(exc).__name__}"
            ) from exc
        finally:
            watchdog.disarm()
            backend.in_flight -= 1
            self.metrics.upstream(backend.model, backend.name, time.perf_counter() - started)
        return await self._answer(backend, response, data, head, send)

    async def _stream(
        self,
        backend: Backend,
        path: str,
        body: bytes,
        headers: dict[str, str],
        head: RequestHead,
        receive: Receive,
        send: Send,
        wants_usage: bool,
    ) -> int:
        headers["accept"] = "text/event-stream"
        backend.in_flight += 1
        started = time.perf_counter()
        watchdog = Watchdog(backend.timeouts)
        client = DisconnectWatch(receive)
        response: aiohttp.ClientResponse | None = None
        relay = StreamRelay(wants_usage)
        try:
            response = await self.client.post(backend, path, body, headers)
            if response.status != 200 or not _is_event_stream(response):
                data = await response.read()
                watchdog.first_byte()
                return await self._answer(backend, response, data, head, send)
            await self._pump(response, relay, watchdog, backend, head, send, started)
            if not relay.done:
                raise UpstreamError(f"deployment {backend.name} ended the stream before [DONE]")
            self._account(backend, relay.usage)
            await _send_or_gone(send, {"type": "http.response.body", "body": b""})
            client.finish()
            return 200
        except asyncio.CancelledError:
            if client.absorb():
                self._account(backend, relay.usage)
                raise ClientGone from None
            if not watchdog.absorb():
                raise
            self.metrics.upstream_error(backend.name, "timeout")
            error: GatewayError = UpstreamTimeout(watchdog.describe())
        except aiohttp.ClientError as exc:
            self.metrics.upstream_error(backend.name, "stream_broken")
            error = UpstreamError(
                f"deployment {backend.name} broke off the stream: {type(exc).__name__}"
            )
        except UpstreamError as exc:
            if isinstance(exc, ConnectFailed):
                raise
            self.metrics.upstream_error(backend.name, "protocol")
            error = exc
        finally:
            client.finish()
            watchdog.disarm()
            backend.in_flight -= 1
            if response is not None:
                response.close()
            self.metrics.upstream(backend.model, backend.name, time.perf_counter() - started)
        if not relay.started:
            raise error
        # After the first byte there is no retry: end the stream with a well-formed error event.
        await _send_or_gone(
            send,
            {
                "type": "http.response.body",
                "body": encode_json_event(error.body(head.request_id)),
                "more_body": False,
            },
        )
        return error.status

    async def _pump(
        self,
        response: aiohttp.ClientResponse,
        relay: StreamRelay,
        watchdog: Watchdog,
        backend: Backend,
        head: RequestHead,
        send: Send,
        started: float,
    ) -> None:
        """Forward each upstream chunk as it arrives (re-framed by the relay); never buffer."""
        async for chunk in response.content.iter_any():
            if relay.started:
                watchdog.touch()
            else:
                # Headers go out with the first chunk, so that a deployment that fails before
                # its first byte still yields a proper HTTP error, not a broken stream.
                watchdog.first_byte()
                headers = self._response_headers(backend, head) + SSE_HEADERS
                await _send_or_gone(
                    send, {"type": "http.response.start", "status": 200, "headers": headers}
                )
                relay.started = True
                self.metrics.ttft(backend.model, backend.name, time.perf_counter() - started)
            out = relay.feed(chunk)
            if out:
                await _send_or_gone(
                    send, {"type": "http.response.body", "body": out, "more_body": True}
                )
                # A slow client holds the send: that wait is not the upstream's idleness.
                watchdog.touch()
        tail = relay.close()
        if tail and relay.started:
            await _send_or_gone(
                send, {"type": "http.response.body", "body": tail, "more_body": True}
            )

    async def _answer(
        self,
        backend: Backend,
        response: aiohttp.ClientResponse,
        data: bytes,
        head: RequestHead,
        send: Send,
    ) -> int:
        """Send a whole (non-streamed) upstream answer on: 2xx must be JSON and is accounted,
        4xx passes through unchanged, 5xx becomes our 502."""
        status = response.status
        if status >= 500:
            self.metrics.upstream_error(backend.name, f"http_{status}")
            raise UpstreamError(
                f"deployment {backend.name} answered HTTP {status}: {_upstream_message(data)}"
            )
        if status in (401, 403):
            # About the gateway's own credential for this deployment, not the client's.
            self.metrics.upstream_error(backend.name, f"http_{status}")
            raise UpstreamError(f"deployment {backend.name} rejected the gateway's credentials")
        if status < 300:
            self._account(backend, _usage_of_body(data, backend))
        headers = self._response_headers(backend, head)
        if status >= 400:  # back-off hints matter on refusals; skip the lookups on success
            for name in PASSED_BACK:
                value = response.headers.get(name)
                if value is not None:
                    headers.append((name.encode(), value.encode("latin-1")))
        content_type = response.headers.get("content-type", "application/json")
        await send_bytes(send, status, data, headers, content_type.encode("latin-1"))
        return status


def _is_event_stream(response: aiohttp.ClientResponse) -> bool:
    return response.headers.get("content-type", "").startswith("text/event-stream")


async def _send_or_gone(send: Send, message: dict[str, Any]) -> None:
    try:
        await send(message)
    except OSError as exc:
        raise ClientGone from exc


def _upstream_message(data: bytes) -> str:
    try:
        body = orjson.loads(data)
        message = body["error"]["message"] if isinstance(body.get("error"), dict) else body
        return str(message)[:500]
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return data[:200].decode("utf-8", "replace") or "(empty body)"


def _usage_of_body(data: bytes, backend: Backend) -> Usage:
    try:
        if len(data) > LARGE_BODY:
            # Embeddings and long answers: parse only the usage object, usually at the end.
            usage = usage_object(data)
            if usage is not None:
                return usage
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamError(f"deployment {backend.name} returned a body that is not JSON") from None
    return usage_from(obj) or Usage()
