"""The call stage: attempts at the plan's deployments, and the answer relayed to the client.

Another deployment is tried only when an attempt never reached its own (the request was not
sent, so nothing can have been generated or billed twice), and only before anything went to
the client. Each attempt records its ``Outcome`` where it ends; the accounting of all of them
happens once, in ``Accounting.finish``. Nothing here awaits a database or creates a task; the
watchdog bounds every upstream wait.

Accounted answers (chat, completions, embeddings) are read whole or relayed as SSE chunks, with
their usage counted; relayed answers (images, speech, transcripts: ``Answer.RELAYED``) pass
through byte for byte as they arrive, whatever their content type, and carry no usage.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from swarmgate.errors import (
    DeploymentsDown,
    DeploymentsDraining,
    GatewayError,
    NoDeployment,
    UpstreamBroken,
    UpstreamError,
    UpstreamThrottled,
    UpstreamTimeout,
)
from swarmgate.errors import UpstreamUnreachable as Unreachable
from swarmgate.pipeline.asgi import SSE_HEADERS, ClientGone, DisconnectWatch, Headers, send_bytes
from swarmgate.pipeline.exchange import Attempt, Exchange
from swarmgate.pipeline.keepalive import KeepAlive
from swarmgate.pipeline.queueing import Queueing
from swarmgate.pipeline.request import Answer, InferenceRequest
from swarmgate.routing.fleet import Deployment
from swarmgate.routing.plan import Plan
from swarmgate.types import Outcome, Receive, Send, Transport, UpstreamResponse, Usage
from swarmgate.upstream.event_relay import EventRelay
from swarmgate.upstream.relay import DecodingRelay, StreamRelay, usage_from, usage_object
from swarmgate.upstream.sse import encode_json_event
from swarmgate.upstream.watchdog import Watchdog

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
# How an attempt that reached nothing of the client may have failed for another deployment to
# be tried: never reached it, a 5xx (or its refusal of the gateway's credentials), a 429, no
# answer in time, an answer that broke off or was not what was asked. An upstream 4xx other
# than 429 is the client's: passed through, never retried.
RETRIED = frozenset(
    {
        Outcome.UNREACHABLE,
        Outcome.SERVER_ERROR,
        Outcome.THROTTLED,
        Outcome.TIMEOUT,
        Outcome.BROKEN,
        Outcome.PROTOCOL,
    }
)


class Caller:
    def __init__(self, transport: Transport, queueing: Queueing) -> None:
        self.transport = transport
        self.queueing = queueing

    async def run(self, x: Exchange, plan: Plan, receive: Receive, send: Send) -> None:
        try:
            await self._attempts(x, plan, receive, send)
        except DeploymentsDown:
            x.fallback = True
            raise
        finally:
            if plan.retries:  # usually none: one attribute test
                plan.done()

    async def _attempts(self, x: Exchange, plan: Plan, receive: Receive, send: Send) -> None:
        request = x.request
        assert request is not None, "the call stage runs after parse"
        queueing = self.queueing
        # A tier held to a share of the pool takes its first slot through the queue's count
        # (when no tier has a share, as by default, this costs one attribute test).
        capped = queueing.capped_tier(x) if queueing.shares else None
        lease = await queueing.first_lease(x, plan, receive, capped) if capped else None
        failed: GatewayError | None = None  # the last attempt's error, once one failed
        while True:
            if lease is None:
                try:
                    state = plan.next()
                except NoDeployment as exc:
                    if failed is not None:  # no other deployment to retry on: its error
                        raise failed from None
                    # Every deployment down: the model's fallback response, no wait in line.
                    if plan.tried or isinstance(exc, DeploymentsDown | DeploymentsDraining):
                        raise
                    # Every deployment busy before the first attempt: wait in line for a slot
                    # (by tier, bounded), handed over with its lease.
                    lease = await queueing.wait(x, plan, receive)
                    continue
                attempt = x.attempt(state)
            else:
                attempt = x.attempt(plan.tried[-1], lease)
                lease = None
            attempt.final = not plan.may_retry() and not x.chained
            try:
                if request.stream:
                    await self._stream(x, request, attempt, receive, send)
                elif x.route.answer is Answer.RELAYED:
                    await self._relay(x, request, attempt, receive, send)
                else:
                    await self._unary(x, request, attempt, send)
                return
            except GatewayError as exc:
                # Raised, not answered: nothing of this attempt reached the client (a failure
                # after the first byte ends the stream with an error event and returns).
                outcome = attempt.outcome
                if outcome not in RETRIED:
                    raise
                # Not charged to the retry budget: a failover off a deployment never reached
                # or out of rotation now (its probes failing, say, for a hung one).
                charged = outcome is not Outcome.UNREACHABLE and attempt.state.health.routable
                wait = plan.retry(charged)
                if wait is None:
                    raise
                failed = exc
            finally:
                attempt.ended = time.perf_counter()
            if wait:
                await asyncio.sleep(wait)

    async def _send(
        self, x: Exchange, request: InferenceRequest, attempt: Attempt
    ) -> UpstreamResponse:
        d = attempt.deployment
        body = request.body_for(d.upstream_model)
        headers = dict(x.head.forward)
        headers["content-type"] = request.content_type
        headers["x-request-id"] = x.head.request_id
        if d.api_key:
            headers["authorization"] = "Bearer " + d.api_key
        if request.stream:
            headers["accept"] = "text/event-stream"
        if x.trace is not None:  # sampled: the deployment's spans are children of this call's
            headers["traceparent"] = x.trace.upstream()
        try:
            response = await self.transport.send(d.origin, x.route.path, body, headers)
        except UpstreamError as exc:
            unreachable = isinstance(exc, Unreachable)
            attempt.outcome = Outcome.UNREACHABLE if unreachable else Outcome.PROTOCOL
            raise _about(exc, d) from exc
        attempt.status = response.status
        return response

    async def _unary(
        self, x: Exchange, request: InferenceRequest, attempt: Attempt, send: Send
    ) -> None:
        watchdog = Watchdog(attempt.deployment.unary_timeouts, attempt.state.health)
        try:
            response = await self._send(x, request, attempt)
            watchdog.first_byte()
            data = await response.read()
        except asyncio.CancelledError:
            if watchdog.absorb():
                attempt.outcome = Outcome.TIMEOUT
                raise UpstreamTimeout(watchdog.describe()) from None
            raise
        except UpstreamBroken as exc:
            attempt.outcome = Outcome.BROKEN
            raise _about(exc, attempt.deployment) from exc
        finally:
            watchdog.disarm()
        await self._answer(x, attempt, response, data, send)

    async def _stream(
        self, x: Exchange, request: InferenceRequest, attempt: Attempt, receive: Receive, send: Send
    ) -> None:
        d = attempt.deployment
        watchdog = Watchdog(d.timeouts, attempt.state.health)
        client = DisconnectWatch(receive)
        response: UpstreamResponse | None = None
        relay = EventRelay() if x.route.events else StreamRelay(request.wants_usage)
        beat = _keepalive(x, d, send)
        try:
            response = await self._send(x, request, attempt)
            if response.status != 200 or not _is_event_stream(response):
                await self._not_a_stream(x, attempt, response, watchdog, relay, beat, send)
                return
            await self._pump(x, attempt, response, relay, watchdog, send, beat)
            if not relay.done:
                raise UpstreamBroken("ended the stream before [DONE]")
            x.usage = relay.usage
            await _send_or_gone(send, {"type": "http.response.body", "body": b""})
            client.finish()
            attempt.outcome = Outcome.OK
            x.status = 200
            return
        except asyncio.CancelledError:
            if client.absorb():
                x.usage = relay.usage
                attempt.outcome = Outcome.CLIENT_GONE
                raise ClientGone from None
            if not watchdog.absorb():
                raise
            attempt.outcome = Outcome.TIMEOUT
            error: GatewayError = UpstreamTimeout(watchdog.describe())
        except UpstreamError as exc:
            if attempt.outcome is None:  # the body or the stream broke off while being read
                attempt.outcome = Outcome.BROKEN
                exc = _about(exc, d)
            # A keep-alive that went out leaves no status to answer with, and no retry.
            relay.started = relay.started or await _head_sent(beat)
            if not relay.started:
                raise exc
            error = exc
        finally:
            client.finish()
            watchdog.disarm()
            if response is not None:
                response.close()
            relay.started = relay.started or await _head_sent(beat)
        if not relay.started:
            raise error
        x.usage = relay.usage  # a cut stream is accounted with what was counted of it
        # After the first byte there is no retry: end the stream with a well-formed error event.
        x.status = error.status
        x.error = error.message
        await _send_or_gone(
            send,
            {
                "type": "http.response.body",
                "body": encode_json_event(error.body(x.head.request_id, x.trace_id)),
                "more_body": False,
            },
        )

    async def _not_a_stream(
        self,
        x: Exchange,
        attempt: Attempt,
        response: UpstreamResponse,
        watchdog: Watchdog,
        relay: DecodingRelay,
        beat: KeepAlive | None,
        send: Send,
    ) -> None:
        """A stream's answer that is not a stream (an error, say): answered whole, or, once a
        keep-alive sent the head, an error for the error event."""
        data = await response.read()
        watchdog.first_byte()
        if await _head_sent(beat):
            relay.started = True
            raise _after_keepalive(attempt, response, data)
        await self._answer(x, attempt, response, data, send)

    async def _relay(
        self, x: Exchange, request: InferenceRequest, attempt: Attempt, receive: Receive, send: Send
    ) -> None:
        """A relayed answer: the head decides (a 2xx is relayed, anything else answered as
        ``_answer`` does), then each chunk goes on as it arrives, never buffered whole."""
        d = attempt.deployment
        # The head of a generated image comes once it is generated: bounded by the total
        # timeout; then the idle bound holds between chunks (of speech, say).
        watchdog = Watchdog(d.unary_timeouts, attempt.state.health)
        client = DisconnectWatch(receive)
        response: UpstreamResponse | None = None
        started = False
        try:
            response = await self._send(x, request, attempt)
            watchdog.first_byte()
            if not 200 <= response.status < 300:
                data = await response.read()
                await self._answer(x, attempt, response, data, send)
                return
            headers = _response_headers(x, d)
            content_type = response.headers.get("content-type", "application/octet-stream")
            headers.append((b"content-type", content_type.encode("latin-1")))
            start = {"type": "http.response.start", "status": response.status, "headers": headers}
            async for chunk in response.chunks():
                watchdog.touch()
                if not started:
                    await _send_or_gone(send, start)
                    started = True
                    attempt.first_byte = time.perf_counter()
                await _send_or_gone(
                    send, {"type": "http.response.body", "body": chunk, "more_body": True}
                )
            if not started:
                await _send_or_gone(send, start)
            await _send_or_gone(send, {"type": "http.response.body", "body": b""})
            client.finish()
            attempt.outcome = Outcome.OK
            x.status = response.status
            return
        except asyncio.CancelledError:
            if client.absorb():
                attempt.outcome = Outcome.CLIENT_GONE
                raise ClientGone from None
            if not watchdog.absorb():
                raise
            attempt.outcome = Outcome.TIMEOUT
            error: GatewayError = UpstreamTimeout(watchdog.describe())
        except UpstreamError as exc:
            if attempt.outcome is None:  # the body broke off while being read
                attempt.outcome = Outcome.BROKEN
                exc = _about(exc, d)
            error = exc
        finally:
            client.finish()
            watchdog.disarm()
            if response is not None:
                response.close()
        if not started:
            raise error
        # Part of a binary body went out, and it has no error event: the response is left
        # incomplete, so that the server drops the connection and the client sees a broken
        # body rather than a short one that looks whole.
        x.status = error.status
        x.error = error.message

    async def _pump(
        self,
        x: Exchange,
        attempt: Attempt,
        response: UpstreamResponse,
        relay: DecodingRelay,
        watchdog: Watchdog,
        send: Send,
        beat: KeepAlive | None = None,
    ) -> None:
        """Forward each upstream chunk as it arrives (re-framed by the relay); never buffer."""
        async for chunk in response.chunks():
            if relay.started:
                watchdog.touch()
            else:
                # Headers go out with the first chunk, so that a deployment that fails before
                # its first byte still yields a proper HTTP error, not a broken stream (unless
                # a keep-alive sent them already).
                watchdog.first_byte()
                if not await _head_sent(beat):
                    headers = _response_headers(x, attempt.deployment) + SSE_HEADERS
                    await _send_or_gone(
                        send, {"type": "http.response.start", "status": 200, "headers": headers}
                    )
                relay.started = True
                attempt.first_byte = time.perf_counter()
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
        self, x: Exchange, attempt: Attempt, response: UpstreamResponse, data: bytes, send: Send
    ) -> None:
        """Send a whole (non-streamed) upstream answer on: 2xx must be JSON and is accounted,
        4xx passes through unchanged, 5xx becomes our 502."""
        d = attempt.deployment
        status = response.status
        if status >= 500:
            attempt.outcome = Outcome.SERVER_ERROR
            raise UpstreamError(
                f"deployment {d.name} answered HTTP {status}: {_upstream_message(data)}"
            )
        if status in (401, 403):
            # About the gateway's own credential for this deployment, not the client's.
            attempt.outcome = Outcome.SERVER_ERROR
            raise UpstreamError(f"deployment {d.name} rejected the gateway's credentials")
        if status == 429 and not attempt.final:
            # Busy, not broken: another deployment is tried; the last one's 429 goes through.
            attempt.outcome = Outcome.THROTTLED
            retry_after = response.headers.get("retry-after")
            raise UpstreamThrottled(
                f"deployment {d.name} is rate limited: {_upstream_message(data)}",
                headers={"retry-after": retry_after} if retry_after else None,
            )
        if status < 300:
            attempt.outcome = Outcome.PROTOCOL  # until the body proves to be JSON
            # A whole byte answer (audio for the native face) carries no usage to count.
            accounted = x.route.answer is Answer.ACCOUNTED
            x.usage = _usage_of_body(data, d) if accounted else Usage()
            attempt.outcome = Outcome.OK
        else:
            attempt.outcome = Outcome.REFUSED
        headers = _response_headers(x, d)
        if status >= 400:  # back-off hints matter on refusals; skip the lookups on success
            # Our own x-ratelimit-* headers win over the deployment's.
            for name in PASSED_BACK if x.grant is None else PASSED_BACK[:1]:
                value = response.headers.get(name)
                if value is not None:
                    headers.append((name.encode(), value.encode("latin-1")))
        content_type = response.headers.get("content-type", "application/json")
        x.status = status
        await send_bytes(send, status, data, headers, content_type.encode("latin-1"))


def _keepalive(x: Exchange, d: Deployment, send: Send) -> KeepAlive | None:
    """Opt-in per model: SSE comments while a stream awaits its first chunk."""
    interval = x.pool.config.stream_keepalive if x.pool is not None else None
    if not interval:
        return None
    headers = _response_headers(x, d) + SSE_HEADERS
    return KeepAlive(
        send, {"type": "http.response.start", "status": 200, "headers": headers}, interval
    )


async def _head_sent(beat: KeepAlive | None) -> bool:
    """Stop the keep-alives (if any): whether they sent the head."""
    return beat is not None and await beat.stop()


def _after_keepalive(attempt: Attempt, response: UpstreamResponse, data: bytes) -> UpstreamError:
    """A stream's answer that is not a stream, once a keep-alive sent the head: an error for
    the error event (its outcome set as ``_answer`` would have)."""
    status = response.status
    if status >= 500:
        attempt.outcome = Outcome.SERVER_ERROR
    elif status >= 400:
        attempt.outcome = Outcome.REFUSED
    else:
        attempt.outcome = Outcome.PROTOCOL
    name = attempt.deployment.name
    return UpstreamError(f"deployment {name} answered HTTP {status}: {_upstream_message(data)}")


def _about(exc: UpstreamError, d: Deployment) -> UpstreamError:
    """The transport's error, naming the deployment (the transport knows only origins)."""
    return type(exc)(f"deployment {d.name}: {exc.message}")


def _response_headers(x: Exchange, d: Deployment) -> Headers:
    headers = [(b"x-request-id", x.head.request_id.encode()), *d.headers]
    if x.grant is not None:
        headers += x.grant.headers()
    if x.response_edit is not None:  # model routing's transforms and variant header
        return x.response_edit.headers(headers)
    return headers


def _is_event_stream(response: UpstreamResponse) -> bool:
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


def _usage_of_body(data: bytes, d: Deployment) -> Usage:
    try:
        if len(data) > LARGE_BODY:
            # Embeddings and long answers: parse only the usage object, usually at the end.
            usage = usage_object(data)
            if usage is not None:
                return usage
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamError(f"deployment {d.name} returned a body that is not JSON") from None
    return usage_from(obj) or Usage()
