"""``Exchange``: the one record of one request, filled in as it passes the stages.

Stages take the exchange instead of a long list of parameters, and ``Accounting.finish`` reads
it once at the end, on every exit path: which deployments were tried, how each attempt ended
(its ``Outcome``), what the client was answered, the usage counted and the timings.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from swarmgate.limits.grant import Grant
from swarmgate.observability.tracecontext import Trace, trace_id_of
from swarmgate.pipeline.asgi import RequestHead, read_head
from swarmgate.pipeline.request import InferenceRequest, Route
from swarmgate.routing.balancers import RoutingFacts
from swarmgate.routing.fleet import Deployment, DeploymentState, Lease, Pool
from swarmgate.routing.transform import ResponseEdit
from swarmgate.types import ASGIScope, Outcome, Principal, Usage


@dataclass(eq=False, slots=True)
class Attempt:
    """One try at one deployment, holding its slot (the lease) until the request finishes."""

    deployment: Deployment
    state: DeploymentState
    lease: Lease
    started: float
    ended: float = 0.0
    first_byte: float = 0.0  # when the first streamed chunk went to the client
    status: int = 0  # the upstream's HTTP status, once its head arrived
    outcome: Outcome | None = None
    final: bool = True  # no retry could follow it (an upstream 429 is then passed through)


@dataclass(eq=False, slots=True)
class Exchange:
    route: Route
    scope: ASGIScope  # the server's, for what the head does not keep (an upload's boundary)
    head: RequestHead
    peer: str | None
    started: float
    principal: Principal | None = None
    request: InferenceRequest | None = None
    pool: Pool | None = None
    facts: RoutingFacts | None = None  # what its pool's balancer was told; told again at finish
    grant: Grant | None = None  # the limits it was admitted under, settled in finish
    attempts: list[Attempt] = field(default_factory=list)
    usage: Usage | None = None  # counted from the answer; None: nothing to account
    # Model routing (routing/selection.py): the split and variant picked, and the edit of the
    # answer's headers (the variant header, a response transform); None when not configured.
    variant: tuple[str, str] | None = None
    response_edit: ResponseEdit | None = None
    status: int = 0  # what the client was answered (499: it left first)
    error: str | None = None  # the message of the error the client was answered with
    fallback: bool = False  # answered with the model's fallback response: every deployment down
    # A fallback model follows if this one is exhausted: its deployments' last 429 is then a
    # reason to fall back (raised), not the answer (passed through). Set by FallbackCaller.
    chained: bool = False
    trace: Trace | None = None  # set only when the request is sampled for tracing

    @property
    def trace_id(self) -> str | None:
        """Its trace id (hex): the sampled trace's, else its client's; None without either."""
        return trace_id_of(self.trace, self.head.forward)

    @classmethod
    def start(cls, scope: ASGIScope, route: Route) -> Exchange:
        peer = scope.get("client")
        return cls(route, scope, read_head(scope), peer[0] if peer else None, time.perf_counter())

    def attempt(self, state: DeploymentState, lease: Lease | None = None) -> Attempt:
        """An attempt at ``state``, with a new lease of it unless ``lease`` already holds it."""
        attempt = Attempt(state.deployment, state, lease or state.lease(), time.perf_counter())
        self.attempts.append(attempt)
        return attempt

    @property
    def model(self) -> str:
        return self.pool.model if self.pool is not None else "-"

    @property
    def deployment(self) -> str:
        return self.attempts[-1].deployment.name if self.attempts else "-"

    @property
    def cut(self) -> bool:
        """Whether the answer was cut short: its body had started (a stream's first event, a
        relayed body's first chunk; only then is ``first_byte`` set) and the request did not
        end in a 2xx (the deployment failed after the first byte, or the client left)."""
        return bool(self.attempts and self.attempts[-1].first_byte) and not (
            200 <= self.status < 300
        )

    @property
    def outcome(self) -> str:
        """How the request ended, for its log line: the last attempt's outcome, or the stage
        that refused it."""
        if self.attempts and self.attempts[-1].outcome is not None:
            return str(self.attempts[-1].outcome)
        if self.status == 499:
            return "client_gone"
        return "ok" if self.status < 400 else "refused"
