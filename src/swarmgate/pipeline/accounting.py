"""``Accounting``: everything counted about a request, in one place, on every exit path.

``start`` opens the record; ``finish`` closes it however the request ended (answered, refused,
failed, the client gone): the admission's grant is settled (concurrency leases released,
reserved tokens settled to the usage), deployment leases are released, each attempt's
outcome is told to its deployment's state and its latency, time to first token and failure
kind are observed, tokens and spend are counted from usage, the request's metrics are
recorded, and a failed request leaves one log line. It never awaits: the usage ledger will
be queued from here, write-behind.
"""

from __future__ import annotations

import logging
import time

from swarmgate.observability.metrics import Metrics
from swarmgate.pipeline.exchange import Attempt, Exchange
from swarmgate.pipeline.request import Route
from swarmgate.types import ASGIScope, Outcome

log = logging.getLogger("swarmgate.requests")


def error_kind(attempt: Attempt) -> str:
    """The ``kind`` label of gateway_upstream_errors_total (``http_503``, ``timeout``...)."""
    if attempt.outcome is Outcome.SERVER_ERROR:
        return f"http_{attempt.status}"
    return str(attempt.outcome)


class Accounting:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def start(self, scope: ASGIScope, route: Route) -> Exchange:
        self.metrics.in_flight += 1
        return Exchange.start(scope, route)

    def finish(self, x: Exchange) -> None:
        metrics = self.metrics
        now = time.perf_counter()
        for attempt in x.attempts:
            attempt.lease.release()
            d = attempt.deployment
            metrics.upstream(d.model, d.name, (attempt.ended or now) - attempt.started)
            if attempt.first_byte:
                metrics.ttft(d.model, d.name, attempt.first_byte - attempt.started)
            outcome = attempt.outcome
            if outcome is not None:
                attempt.state.observe(outcome)
                if outcome.is_failure:
                    metrics.upstream_error(d.name, error_kind(attempt))
        usage = x.usage
        grant = x.grant
        if grant is not None:
            # Leases released, the token reservation settled to what was counted (a cut
            # stream: what had been counted when it broke, else its whole reservation;
            # nothing answered: none).
            generated = bool(x.attempts) and x.attempts[-1].first_byte > 0
            used = grant.settle(usage, generated)
            if used:
                metrics.tokens_settled(grant.tier, used)
        if usage is not None and x.attempts:
            d = x.attempts[-1].deployment
            metrics.tokens(d.model, usage.prompt_tokens, usage.completion_tokens)
            cost = d.cost(usage.prompt_tokens, usage.completion_tokens)
            if cost:
                metrics.cost(d.model, cost)
        metrics.in_flight -= 1
        latency = now - x.started
        route = x.route
        metrics.request("POST", route.endpoint or route.path, x.status, latency)
        if x.pool is not None:
            metrics.inference(x.pool.model, route.name)
        principal = x.principal
        if principal is not None:
            metrics.seen(principal.key_id or principal.subject, now)
        if x.status >= 400:
            self._log_failure(x, latency)

    @staticmethod
    def _log_failure(x: Exchange, latency: float) -> None:
        # One line per failed request, as logfmt; 5xx are the gateway's or a deployment's
        # failures (warning), 4xx the client's (info).
        level = logging.WARNING if x.status >= 500 else logging.INFO
        if not log.isEnabledFor(level):
            return
        log.log(
            level,
            "request_id=%s route=%s model=%s deployment=%s outcome=%s status=%d latency_ms=%.1f"
            ' attempts=%d error="%s"',
            x.head.request_id,
            x.route.name,
            x.model,
            x.deployment,
            x.outcome,
            x.status,
            latency * 1000,
            len(x.attempts),
            (x.error or "").replace('"', "'"),
        )
