"""``ResourceAware``: the candidate with the lowest expected cost, from what the deployments'
own metrics said (``routing/load.py``) blended with what the gateway knows now.

A scrape is seconds old by the time it is read, and every request the gateway sent since is
missing from it: routing on scraped queues alone sends a whole burst to the deployment that
looked idle (llm-d-router #298). So the gateway's own in-flight count is the base of the
score (fresh: leases change it in the same thread as the choice), and the scraped figures
add what the gateway cannot see (other clients' requests, the server's queue and KV cache),
weighed down by their age:

    fresh    = 0.5 ** (age / half_life), 0 once age >= stale_after
    expected = in_flight + fresh * (waiting + running + kv_requests * kv_usage)
    cost     = (expected + 1) / weight * latency factor

The scraped ``running`` holds the gateway's own requests of that moment too. They are not
subtracted: the gateway cannot tell which of its in-flight requests the scrape saw, and
subtracting its whole count would make the cost flat in ``in_flight`` right after a scrape,
which is the herd again. Counted twice they weigh every deployment alike, and each pick still
raises the chosen one's cost by a full request.

The latency factor is the square root of the deployment's moving average of time to first
byte against the candidates' mean, clamped to [0.5, 2] (Finagle's peak-EWMA idea: a slow
deployment is worth fewer requests). The root, because in steady state the in-flight count
already grows with latency (Little's law: in flight = rate x latency): with the whole ratio
on top, a deployment's share of requests would fall with the square of its latency, and one
4x slower would get 1/16 of a fast one's requests where it can serve 1/4, idling while the
fast ones queue (bench/routing.py measured it). With the root a burst, before any count can
show it, still leans 2:1 toward a deployment 4x faster. Equal costs are broken at random, so
that replicas of the gateway do not all pick the same one. ``cost`` is a pure function; the
balancer keeps only the moving averages, fed by ``finished`` after each served request.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence

from swarmgate.routing.balancers import DeploymentView, RoutingFacts, SessionKey
from swarmgate.routing.load import Load
from swarmgate.types import Clock, Outcome

LATENCY_CLAMP = (0.5, 2.0)  # of the factor, the square root of the latency ratio
EWMA_ALPHA = 0.2  # the weight of each new latency sample


def freshness(load: Load | None, now: float, half_life: float, stale_after: float) -> float:
    """How much scraped figures count: 1 when just read, halving every ``half_life``."""
    if load is None:
        return 0.0
    age = max(0.0, load.age(now))
    if age >= stale_after:
        return 0.0
    return float(0.5 ** (age / half_life))


def cost(
    view: DeploymentView,
    now: float,
    *,
    half_life: float,
    stale_after: float,
    kv_requests: float,
    latency_factor: float = 1.0,
) -> float:
    """The expected cost of sending one more request to ``view`` (lower is better)."""
    in_flight = view.in_flight
    expected = float(in_flight)
    # A DeploymentState's scraped figures; a view without any (a test's) has none.
    load: Load | None = getattr(view, "load", None)
    fresh = freshness(load, now, half_life, stale_after)
    if load is not None and fresh > 0.0:
        kv = load.kv_usage or 0.0
        expected += fresh * (load.waiting + load.running + kv_requests * kv)
    return (expected + 1.0) / view.weight * latency_factor


class ResourceAware:
    __slots__ = ("_clock", "_latency", "_random", "half_life", "kv_requests", "stale_after")
    # Keys on no session: the request path never looks one up for it.
    session: SessionKey | None = None

    def __init__(
        self,
        *,
        half_life: float = 2.0,
        stale_after: float = 10.0,
        kv_requests: float = 4.0,
        rng: random.Random | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        if half_life <= 0 or stale_after <= 0 or kv_requests < 0:
            raise ValueError("half_life and stale_after must be positive, kv_requests not negative")
        self.half_life = half_life
        self.stale_after = stale_after
        self.kv_requests = kv_requests
        self._random = rng or random.Random()
        self._clock = clock
        self._latency: dict[str, float] = {}  # name → moving average of seconds

    def latency_factors(self, views: Sequence[DeploymentView]) -> list[float] | None:
        """The square root of each candidate's latency against the candidates' mean; None
        while fewer than two of them have one (then latency does not count)."""
        latency = self._latency
        if len(latency) < 2:
            return None
        known = [latency.get(v.name) for v in views]
        seen = [s for s in known if s is not None]
        if len(seen) < 2:
            return None
        mean = sum(seen) / len(seen)
        low, high = LATENCY_CLAMP
        return [1.0 if s is None else min(high, max(low, (s / mean) ** 0.5)) for s in known]

    def choose(self, views: Sequence[DeploymentView], request: RoutingFacts) -> int:
        if len(views) == 1:
            return 0
        now = self._clock()
        factors = self.latency_factors(views)
        half_life, stale_after, kv_requests = self.half_life, self.stale_after, self.kv_requests
        best: list[int] = []
        best_cost = float("inf")
        # ``cost`` inlined: this runs for every request of the pool.
        for i, view in enumerate(views):
            expected = float(view.in_flight)
            load: Load | None = getattr(view, "load", None)
            if load is not None:
                age = now - load.at
                if age < stale_after:
                    fresh = 0.5 ** (max(0.0, age) / half_life)
                    expected += fresh * (
                        load.waiting + load.running + kv_requests * (load.kv_usage or 0.0)
                    )
            c = (expected + 1.0) / view.weight
            if factors is not None:
                c *= factors[i]
            if c < best_cost - 1e-9:
                best, best_cost = [i], c
            elif c <= best_cost + 1e-9:
                best.append(i)
        return best[0] if len(best) == 1 else self._random.choice(best)

    def finished(
        self, name: str, facts: RoutingFacts, outcome: Outcome | None, seconds: float
    ) -> None:
        """A request served by ``name`` took ``seconds`` to its first byte (its whole answer
        when not streamed); failures are the breakers' business, not a latency."""
        if outcome is not Outcome.OK:
            return
        old = self._latency.get(name)
        self._latency[name] = seconds if old is None else old + EWMA_ALPHA * (seconds - old)
