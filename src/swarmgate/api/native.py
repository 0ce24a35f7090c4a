"""The seed-native inference face: ``POST /api/v1/inference/{text-generation,
image-generation,text-to-speech}`` and ``GET /api/v1/inference/{task_id}``.

A native request runs through the very stages ``/v1`` does (``Inference.serve``:
authenticate, read, parse, resolve, authorize, admit, plan, call, ``Accounting.finish``);
only the parser (``pipeline/native_request.py``), the answer's translation
(``pipeline/native_answer.py``) and the error writer (seed 001's format) are the face's own.
"""

from __future__ import annotations

from swarmgate.api.v1 import Inference
from swarmgate.auth.roles import has_scope, require
from swarmgate.errors import GatewayError, ModelNotFound, NotFound
from swarmgate.pipeline.asgi import Headers, RequestHead, read_head, send_bytes
from swarmgate.pipeline.exchange import Exchange
from swarmgate.pipeline.native_answer import NativeAnswer, Task, new_task_id
from swarmgate.pipeline.native_errors import send_native_error
from swarmgate.pipeline.native_request import PARSERS, PREFIX, SCOPES
from swarmgate.pipeline.results import Results
from swarmgate.types import ApiScope, ASGIScope, Authenticator, Principal, Receive, Send


async def authenticate(
    authenticator: Authenticator, scope: ASGIScope
) -> tuple[RequestHead, Principal]:
    head = read_head(scope)
    peer = scope.get("client")
    principal = await authenticator.authenticate(
        head.authorization, peer[0] if peer else None, head.forwarded_for, head.request_id
    )
    return head, principal


class NativeInference:
    def __init__(self, inference: Inference, results: Results) -> None:
        self.inference = inference
        self.results = results

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        route, parse_body = PARSERS[scope["path"]]
        x = self.inference.accounting.start(scope, route)
        task = Task(new_task_id(), route.name, SCOPES[route.name])
        answer = NativeAnswer(send, x, task, self.results)
        await self.inference.serve(x, parse_body, receive, answer, self._error)

    async def _error(self, send: Send, exc: GatewayError, x: Exchange) -> None:
        details = None
        if isinstance(exc, ModelNotFound) and x.request is not None:
            principal = x.principal
            visible = [
                m
                for m in self.inference.fleet.snapshot.pools
                if principal is None or principal.allows_model(m)
            ]
            details = {"model": x.request.model, "available_models": sorted(visible)}
        # ``send`` is the answer's translator: errors go straight to the client.
        target = send.client if isinstance(send, NativeAnswer) else send
        await send_native_error(target, exc, x.head.request_id, details, x.trace_id)

    async def task(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        """``GET /api/v1/inference/{task_id}``: a kept answer, to the caller who got it."""
        head = read_head(scope)
        try:
            head, principal = await authenticate(self.inference.authenticator, scope)
            task_id = scope["path"].removeprefix(PREFIX)
            stored = self.results.get(task_id)
            # Someone else's task is as unknown as a task never run.
            admin = has_scope(principal.scopes, ApiScope.ADMIN.value)
            if stored is None or not (admin or stored.owner == principal.subject):
                raise NotFound(
                    f"no result for task {task_id!r}: unknown, expired (results are kept "
                    f"{self.results.ttl:g}s) or served by another replica",
                    param="task_id",
                )
            require(principal, stored.scope)
            headers: Headers = [(b"x-request-id", head.request_id.encode())]
            await send_bytes(send, 200, stored.body, headers)
        except GatewayError as exc:
            await send_native_error(send, exc, head.request_id)
