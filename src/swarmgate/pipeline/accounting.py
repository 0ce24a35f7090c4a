"""``Accounting``: everything counted about a request, in one place, on every exit path.

``start`` opens the record; ``finish`` closes it however the request ended (answered, refused,
failed, the client gone): the admission's grant is settled (concurrency leases released,
reserved tokens settled to the usage), deployment leases are released, each attempt's
outcome is told to its deployment's state and its latency, time to first token and failure
kind are observed, tokens and spend are counted from usage, the request's metrics are
recorded, a failed request leaves one log line, and an authenticated request leaves one usage
record on the ledger. It never awaits: the ledger's record is a named tuple appended to a
write-behind queue (``limits.ledger``), encoded and stored later, off the request's path.

When they are on, the access log and tracing are told here too, and they cost a request only
what is on: the access log's entry is a tuple of values queued for its thread to render
(``pipeline/access.py``); tracing's decision is taken in ``start`` (an unsampled request
carries no trace) and a sampled request's spans are built here, from the times it recorded
(``pipeline/spans.py``), and exported by the SDK's thread.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from swarmgate.limits.ledger import Ledger
from swarmgate.observability.access import AccessLog
from swarmgate.observability.metrics import Metrics
from swarmgate.observability.tracecontext import Sampler
from swarmgate.pipeline.access import Entry, entry
from swarmgate.pipeline.exchange import Attempt, Exchange
from swarmgate.pipeline.request import Route
from swarmgate.store.usage import UsageRecord
from swarmgate.types import ASGIScope, Outcome, Principal, Usage

if TYPE_CHECKING:
    from swarmgate.observability.tracing import Tracing

log = logging.getLogger("swarmgate.requests")
# The ledger's deployment for a request answered with its model's fallback response (every
# deployment down): parenthesised, so that it reads as no deployment's name.
FALLBACK = "(fallback)"


def error_kind(attempt: Attempt) -> str:
    """The ``kind`` label of gateway_upstream_errors_total (``http_503``, ``timeout``...)."""
    if attempt.outcome is Outcome.SERVER_ERROR:
        return f"http_{attempt.status}"
    return str(attempt.outcome)


class Accounting:
    def __init__(
        self,
        metrics: Metrics,
        ledger: Ledger | None = None,
        *,
        tracing: Tracing | None = None,
        access: AccessLog[Entry] | None = None,
    ) -> None:
        self.metrics = metrics
        self.ledger = ledger
        self.tracing = tracing
        self.sampler: Sampler | None = tracing.sampler if tracing is not None else None
        self.access = access

    def start(self, scope: ASGIScope, route: Route) -> Exchange:
        self.metrics.in_flight += 1
        x = Exchange.start(scope, route)
        if self.sampler is not None:  # tracing off: this one test is all it costs
            x.trace = self.sampler.sample(x.head.forward)
        return x

    def finish(self, x: Exchange) -> None:
        metrics = self.metrics
        now = time.perf_counter()
        if x.attempts:
            self._attempts(x, now)
            if x.facts is not None and x.pool is not None:
                _learn(x, now)
        usage = x.usage
        cost = self._spent(x, usage)
        metrics.in_flight -= 1
        if x.variant is not None:
            metrics.variant(*x.variant, x.status)
        latency = now - x.started
        route = x.route
        metrics.request("POST", route.endpoint or route.path, x.status, latency)
        if x.pool is not None:
            metrics.inference(x.pool.model, route.name)
            if x.fallback:
                metrics.fallback(x.pool.model)
        principal = x.principal
        if principal is not None:
            metrics.seen(principal.key_id or principal.subject, now)
            if self.ledger is not None:
                self.ledger.put(_record(x, principal, usage, cost, latency))
        if x.status >= 400:
            self._log_failure(x, latency)
        access = self.access
        if access is not None and access.wants(x.status >= 400):
            access.put(entry(x, latency, time.time()))
        if x.trace is not None and self.tracing is not None:
            from swarmgate.pipeline.spans import record  # needs the SDK: only when tracing

            record(self.tracing, x, x.trace, now)

    def _spent(self, x: Exchange, usage: Usage | None) -> float:
        """The tokens and cost of the usage counted, and the admission's grant settled with
        them; the cost."""
        metrics = self.metrics
        cost = 0.0
        if usage is not None and x.attempts:
            d = x.attempts[-1].deployment
            metrics.tokens(d.model, usage.prompt_tokens, usage.completion_tokens)
            cost = d.cost(usage.prompt_tokens, usage.completion_tokens)
            if cost:
                metrics.cost(d.model, cost)
        grant = x.grant
        if grant is not None:
            # Leases released, the token reservation settled to what was counted (a cut
            # stream: what had been counted when it broke, else its whole reservation;
            # nothing answered: none), the cost charged to the budgets.
            generated = bool(x.attempts) and x.attempts[-1].first_byte > 0
            used = grant.settle(usage, generated, cost)
            if used:
                metrics.tokens_settled(grant.tier, used)
        return cost

    def _attempts(self, x: Exchange, now: float) -> None:
        metrics = self.metrics
        if len(x.attempts) > 1:
            metrics.retries(x.attempts[0].deployment.model, len(x.attempts) - 1)
        for attempt in x.attempts:
            attempt.lease.release()
            d = attempt.deployment
            metrics.upstream(d.model, d.name, (attempt.ended or now) - attempt.started)
            if attempt.first_byte:
                metrics.ttft(d.model, d.name, attempt.first_byte - attempt.started)
            outcome = attempt.outcome
            if outcome is not None:
                attempt.state.health.observe(outcome)
                if outcome.is_failure:
                    metrics.upstream_error(d.name, error_kind(attempt))
            else:  # ended with no verdict (cancelled, say): a half-open trial's slot comes back
                attempt.state.health.breaker.release()

    @staticmethod
    def _log_failure(x: Exchange, latency: float) -> None:
        # One line per failed request, as logfmt; 5xx are the gateway's or a deployment's
        # failures (warning), 4xx the client's (info).
        level = logging.WARNING if x.status >= 500 else logging.INFO
        if not log.isEnabledFor(level):
            return
        trace_id = x.trace_id
        log.log(
            level,
            "request_id=%s trace_id=%s route=%s model=%s deployment=%s outcome=%s status=%d"
            ' latency_ms=%.1f attempts=%d error="%s"',
            x.head.request_id,
            trace_id or "-",
            x.route.name,
            x.model,
            x.deployment,
            x.outcome,
            x.status,
            latency * 1000,
            len(x.attempts),
            (x.error or "").replace('"', "'"),
            extra={
                "request_id": x.head.request_id,
                "trace_id": trace_id,
                "route": x.route.name,
                "model": x.model,
                "deployment": x.deployment,
                "status": x.status,
                "latency_ms": round(latency * 1000, 1),
            },
        )


def _learn(x: Exchange, now: float) -> None:
    """Tell a balancer that learns from served requests (``finished``: the prefix index, the
    latency averages) how the last attempt ended; the others have no such method."""
    finished = getattr(x.pool.balancer if x.pool is not None else None, "finished", None)
    if finished is not None and x.facts is not None:
        last = x.attempts[-1]
        end = last.first_byte or last.ended or now
        finished(last.deployment.name, x.facts, last.outcome, end - last.started)


def _record(
    x: Exchange, principal: Principal, usage: Usage | None, cost: float, latency: float
) -> UsageRecord:
    """The ledger's record of a request (a named tuple: nothing is encoded here)."""
    last = x.attempts[-1] if x.attempts else None
    request = x.request
    model = x.pool.model if x.pool is not None else (request.model if request else None)
    return UsageRecord(
        x.head.request_id,
        time.time(),
        principal.key_id,
        principal.subject,
        principal.tier,
        model,
        last.deployment.name if last is not None else (FALLBACK if x.fallback else None),
        x.route.client_path,
        usage.prompt_tokens if usage is not None else 0,
        usage.completion_tokens if usage is not None else 0,
        cost,
        latency,
        last.first_byte - x.started if last is not None and last.first_byte else None,
        x.status,
        request.stream if request is not None else False,
        x.cut,
    )
