"""The call stage with fallback models: when a model's deployments are exhausted before
anything was answered, the next model of its chain (``models.<id>.fallbacks``) is called.

It wraps the ``Caller`` (built in the ``Gateway`` only when some model has fallbacks), so
that the call stage's own attempts and retries stay as they are: a fallback model is tried
only once the call stage gave up on the model before it. "Exhausted" is decided by
``exhausted``: no deployment could take the request, the last one tried never received it,
or it answered 5xx. A timeout or a broken answer is not (it may have generated, and been
billed, already), nor is anything once a byte went to the client (the call stage then ends
the stream with its error event and returns).
"""

from __future__ import annotations

import logging

from swarmgate.errors import NoDeployment, UpstreamError, UpstreamThrottled, UpstreamUnreachable
from swarmgate.pipeline.call import Caller
from swarmgate.pipeline.exchange import Exchange
from swarmgate.routing.balancers import RoutingFacts
from swarmgate.routing.fleet import Fleet
from swarmgate.routing.plan import Plan, Router
from swarmgate.routing.selection import ModelSelector
from swarmgate.types import Outcome, Receive, Send

log = logging.getLogger("swarmgate.proxy")


def exhausted(x: Exchange, exc: NoDeployment | UpstreamError | UpstreamThrottled) -> bool:
    """Whether a failed call leaves its model's deployments exhausted, nothing answered
    (every one down, unreachable, failing or answering 429)."""
    if isinstance(exc, NoDeployment | UpstreamUnreachable | UpstreamThrottled):
        return True
    return bool(x.attempts) and x.attempts[-1].outcome is Outcome.SERVER_ERROR


class FallbackCaller:
    def __init__(
        self, caller: Caller, selector: ModelSelector, fleet: Fleet, router: Router
    ) -> None:
        self.caller = caller
        self.selector = selector
        self.fleet = fleet
        self.router = router

    async def run(self, x: Exchange, plan: Plan, receive: Receive, send: Send) -> None:
        principal, request = x.principal, x.request
        assert principal is not None and request is not None, "the call stage runs after parse"
        tried: list[str] = []
        while True:
            model = plan.pool.model
            x.chained = (
                self.selector.next_model(model, [*tried, model], principal.allows_model) is not None
            )
            try:
                await self.caller.run(x, plan, receive, send)
                return
            except (NoDeployment, UpstreamError, UpstreamThrottled) as exc:
                failed = plan.pool.model
                if not exhausted(x, exc):
                    raise
                tried.append(failed)
                nxt = self.selector.next_model(failed, tried, principal.allows_model)
                if nxt is None:
                    raise  # the chain is spent: the last model's own error
                log.info(
                    "request %s: model %s exhausted (%s); falling back to %s",
                    x.head.request_id,
                    failed,
                    exc.message,
                    nxt,
                )
                x.pool = pool = self.fleet.resolve(nxt)
                # The facts its balancer reads, found as the inference stage finds them.
                session = pool.balancer.session
                key = (
                    None
                    if session is None
                    else session.of(x.scope["headers"], request.payload, principal)
                )
                plan = self.router.plan(pool, RoutingFacts(pool.model, request.stream, key))
