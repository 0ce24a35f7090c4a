"""The OpenAI inference routes (``/v1/chat/completions``, ``/v1/completions``,
``/v1/embeddings``, ``/v1/images/generations``, ``/v1/audio/speech``,
``/v1/audio/transcriptions``): the hot path, read top to bottom.

authenticate → read and parse the body → resolve the model (model routing's choice, when
configured: ``routing/selection.py``) → authorize → admit → plan and call (retrying another
deployment only if the request never reached the first; then the model's fallbacks, when it
has some: ``pipeline/fallback.py``) → answer; and ``finish`` on every exit path. Errors are
written in OpenAI's schema, here and only here.
``serve`` is that sequence for every face: the native ``/api/v1`` face (``api/native.py``)
passes its own parser and error writer, so whatever the stages do applies to it too.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from swarmgate.errors import GatewayError
from swarmgate.pipeline.accounting import Accounting
from swarmgate.pipeline.asgi import ClientGone, read_body, send_error
from swarmgate.pipeline.call import Caller
from swarmgate.pipeline.exchange import Exchange
from swarmgate.pipeline.fallback import FallbackCaller
from swarmgate.pipeline.request import ROUTES, Body, InferenceRequest, Route, parse, parse_upload
from swarmgate.pipeline.stages import Admission, authorize
from swarmgate.routing.aware import facts_for
from swarmgate.routing.balancers import RoutingFacts
from swarmgate.routing.fleet import Fleet, Pool
from swarmgate.routing.plan import Router
from swarmgate.routing.selection import ModelSelector
from swarmgate.types import ASGIScope, Authenticator, Receive, Send

log = logging.getLogger("swarmgate.proxy")

ParseBody = Callable[[Route, bytes], InferenceRequest]
WriteError = Callable[[Send, GatewayError, Exchange], Awaitable[None]]
# A face's own step once the pool is known, before admission (the Responses API's: the stored
# conversation read, the request passed through or translated for the pool).
Prepare = Callable[[Exchange], Awaitable[None]]


class Inference:
    def __init__(
        self,
        authenticator: Authenticator,
        fleet: Fleet,
        admission: Admission,
        router: Router,
        caller: Caller | FallbackCaller,
        accounting: Accounting,
        max_body_bytes: int,
        body_stall: float | None = None,
        max_upload_bytes: int | None = None,
        selector: ModelSelector | None = None,
    ) -> None:
        self.authenticator = authenticator
        self.fleet = fleet
        self.admission = admission
        self.router = router
        self.caller = caller
        self.accounting = accounting
        self.max_body_bytes = max_body_bytes
        self.body_stall = body_stall
        self.max_upload_bytes = max_upload_bytes or max_body_bytes
        self.selector = selector  # None: no model routing configured

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        route = ROUTES.get(scope["path"])
        if route is None:  # behind a path route's prefix (/fast/v1/chat/completions)
            assert self.selector is not None, "only path routes register other paths"
            found = self.selector.path_route(scope["path"])
            assert found is not None
            route = ROUTES[found[0]]
        x = self.accounting.start(scope, route)
        await self.serve(x, parse, receive, send, _openai_error)

    async def serve(
        self,
        x: Exchange,
        parse_body: ParseBody,
        receive: Receive,
        send: Send,
        write_error: WriteError,
        prepare: Prepare | None = None,
    ) -> None:
        """The stages, for any face: ``parse_body`` turns the client's body into the upstream
        request, ``write_error`` renders an error in the face's schema, ``prepare`` (if any)
        may replace the request and route once the pool is known."""
        trace = x.trace  # None unless sampled: then the stages' ends are marked, for its spans
        try:
            head = x.head
            x.principal = await self.authenticator.authenticate(
                head.authorization, x.peer, head.forwarded_for, head.request_id
            )
            if trace is not None:
                trace.authenticated = time.perf_counter()
            if x.route.body is Body.JSON:
                body = await read_body(
                    receive, self.max_body_bytes, head.content_length, self.body_stall
                )
                x.request = request = parse_body(x.route, body)
            else:
                x.request = request = await self._upload(receive, x)
            selector = self.selector
            if selector is None:
                x.pool = pool = self.fleet.resolve(request.model, x.principal.allows_model)
            else:
                x.pool = pool = self._select(selector, x, request)
            authorize(x)
            if trace is not None:
                trace.parsed = time.perf_counter()
            if prepare is not None:
                await prepare(x)
                request = x.request
                assert request is not None
            admitting = self.admission.admit(x, receive)  # None: decided without waiting
            if admitting is not None:
                await admitting
            if trace is not None:
                trace.admitted = time.perf_counter()
            balancer = pool.balancer
            session = balancer.session  # None unless the balancer keys on a session
            if session is None:  # the prompt is hashed only for a prefix-aware pool
                facts = facts_for(balancer, pool.model, request.stream, request.payload)
            else:
                key = session.of(x.scope["headers"], request.payload, x.principal)
                facts = RoutingFacts(pool.model, request.stream, key)
            x.facts = facts
            plan = self.router.plan(pool, facts)
            await self.caller.run(x, plan, receive, send)
        except GatewayError as exc:
            x.status, x.error = exc.status, exc.message
            await _unless_gone(write_error(send, exc, x))
        except ClientGone:
            x.status = 499
        except Exception:
            # A bug of ours: logged with its traceback, answered in the face's schema.
            log.exception(
                "unexpected error serving %s (request %s)", x.route.name, x.head.request_id
            )
            x.status, x.error = 500, "unexpected error"
            error = GatewayError("internal error in the gateway; see its log for this request id")
            await _unless_gone(write_error(send, error, x))
        finally:
            self.accounting.finish(x)

    def _select(self, selector: ModelSelector, x: Exchange, request: InferenceRequest) -> Pool:
        """The pool model routing picks (routes, auto, splits, context windows), with its
        transforms applied to the request."""
        principal = x.principal
        assert principal is not None
        forward = x.head.forward
        choice = selector.choose(
            request.model,
            request.payload,
            forward,
            path=x.scope["path"],
            tier=principal.tier,
            sticky=principal.key_id or principal.subject or x.head.request_id,
            allowed=principal.allows_model if principal.models is not None else None,
        )
        pool = self.fleet.resolve(choice.model, principal.allows_model)
        edit = choice.request_edit
        if edit is not None:
            # A multipart body's fields are forwarded as sent: only headers change there.
            payload = request.payload if request.form is None else {}
            if edit.apply(payload, forward) and request.form is None:
                request.edited = True
        if choice.variant is not None:
            assert choice.split is not None
            x.variant = (choice.split, choice.variant)
        x.response_edit = choice.response_edit
        return pool

    async def _upload(self, receive: Receive, x: Exchange) -> InferenceRequest:
        """A multipart body: bounded by its own limit, read off the hot path of JSON routes."""
        body = await read_body(
            receive, self.max_upload_bytes, x.head.content_length, self.body_stall
        )
        content_type = next(
            (v.decode("latin-1") for k, v in x.scope["headers"] if k == b"content-type"), None
        )
        return parse_upload(x.route, body, content_type)


async def _openai_error(send: Send, error: GatewayError, x: Exchange) -> None:
    await send_error(send, error, x.head.request_id, x.trace_id)


async def _unless_gone(writing: Awaitable[None]) -> None:
    # The client left, or the response had already started (a server's own "response
    # already started" error): nothing more can be said to it.
    with contextlib.suppress(ClientGone, RuntimeError):
        await writing
