"""A request's plan: which deployments to try, in order, and whether another try is allowed.

The plan picks lazily, one deployment per attempt, so that each pick sees the in-flight counts
and the health of the moment: the balancer chooses among the pool's deployments that have
capacity, are up (``DeploymentHealth.routable``, or admitted as a half-open trial) and have not
been tried for this request. When none is up at all the model's fallback response is raised
(``DeploymentsDown``); when the ones that are up are all busy, ``NoDeployment`` (the caller may
then wait in line for a slot).

Another attempt (``retry``) is allowed after a failure that reached nothing of the client, up to
the model's ``retry.max_attempts``, never on a deployment already tried, and only within the
pool's retry budget (``RetryBudget``), so that a sick fleet is not stormed by its own retries.
"""

from __future__ import annotations

import random

from swarmgate.config import Fallback, Retry
from swarmgate.errors import DeploymentsDown, DeploymentsDraining, NoDeployment
from swarmgate.routing.balancers import RoutingFacts
from swarmgate.routing.fleet import DeploymentState, Pool

MAX_ATTEMPTS = 3


class RetryBudget:
    """Envoy's retry budget for one pool: retries in progress at most ``percent`` of the
    pool's attempts in flight, but at least ``floor`` at once."""

    __slots__ = ("active", "floor", "percent")

    def __init__(self, percent: float = 20.0, floor: int = 3) -> None:
        self.percent = percent
        self.floor = floor
        self.active = 0  # retries in progress

    def allows(self, in_flight: int) -> bool:
        return self.active < max(self.floor, in_flight * self.percent / 100)

    def take(self) -> None:
        self.active += 1

    def give_back(self) -> None:
        if self.active:
            self.active -= 1


def backoff(retry: Retry, retries: int, rng: random.Random) -> float:
    """Seconds to wait before retry number ``retries`` (1, 2, ...): "full jitter", uniform
    between 0 and the exponential bound, so that retries of one burst spread out."""
    bound = min(retry.backoff_max, retry.backoff_base * 2 ** (retries - 1))
    return rng.uniform(0.0, bound) if bound > 0 else 0.0


def fallback_error(model: str, fallback: Fallback) -> DeploymentsDown:
    headers = {"retry-after": str(fallback.retry_after)} if fallback.retry_after is not None else {}
    return DeploymentsDown(
        f"model {model!r}: {fallback.message}",
        status=fallback.status,
        content=fallback.body,
        headers=headers,
    )


class Plan:
    __slots__ = (
        "_budget",
        "_facts",
        "_limit",
        "_rng",
        "attempts_retried",
        "pool",
        "retries",
        "tried",
    )

    def __init__(
        self,
        pool: Pool,
        facts: RoutingFacts,
        max_attempts: int = MAX_ATTEMPTS,
        budget: RetryBudget | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.pool = pool
        self._facts = facts
        self._limit = min(max_attempts, len(pool.members))
        self._budget = budget
        self._rng = rng
        self.tried: list[DeploymentState] = []
        self.retries = 0  # retries taken from the budget, given back by ``done``
        self.attempts_retried = 0  # every retry, charged or not (the backoff grows with it)

    def next(self) -> DeploymentState:
        """The deployment for the next attempt; ``NoDeployment`` if none can take it now,
        ``DeploymentsDown`` if none is up."""
        pool = self.pool
        tried = self.tried
        members = pool.members
        if not tried and len(members) == 1:  # the common first pick: no balancer to consult
            only = members[0]
            if only.has_capacity and only.health.routable:
                tried.append(only)
                return only
        # ``routable`` is one attribute test; only a deployment that is not (ejected, circuit
        # open or half-open, probes down) has its clock read by ``admits``.
        candidates = [
            m
            for m in members
            if m.has_capacity and m not in tried and (m.health.routable or m.health.admits())
        ]
        if not candidates:
            raise self._none_left()
        chosen = candidates[pool.balancer.choose(candidates, self._facts)]
        if not chosen.health.routable:
            chosen.health.sent()  # a half-open circuit's trial
        tried.append(chosen)
        return chosen

    def _none_left(self) -> NoDeployment:
        pool = self.pool
        untried = [m for m in pool.members if m not in self.tried]
        if untried and not any(m.healthy for m in untried):
            return fallback_error(pool.model, pool.config.fallback)
        if untried and all(m.draining for m in untried):
            return DeploymentsDraining(
                f"every deployment of model {pool.model!r} is draining (taken out of rotation "
                "by an operator); retry later",
                headers={"Retry-After": "1"},
            )
        return NoDeployment(
            f"no deployment of model {pool.model!r} can take the request now "
            f"({len(pool.members)} configured, all busy or unavailable)"
        )

    def take(self, state: DeploymentState) -> DeploymentState:
        """A deployment the next attempt goes to without a pick: its slot was handed over."""
        self.tried.append(state)
        return state

    def may_retry(self) -> bool:
        """Whether the attempt count would allow another attempt (the budget is not asked)."""
        return len(self.tried) < self._limit

    def retry(self, charged: bool = True) -> float | None:
        """Another attempt after a failed one: the seconds to wait first (jittered), or None
        when it is not allowed (attempts used up, or the pool's retry budget spent).

        A retry that is not ``charged`` is a failover: the failed attempt never reached its
        deployment, or that deployment is out of rotation now. It moves the request's load
        to a deployment that is up rather than adding any, so the budget is not asked (else
        the requests stranded on a deployment found hung would fail together)."""
        if not self.may_retry():
            return None
        budget = self._budget
        if budget is not None and charged:
            if not budget.allows(sum(m.in_flight for m in self.pool.members)):
                return None
            budget.take()
            self.retries += 1
        self.attempts_retried += 1
        if self._rng is None:
            return 0.0
        return backoff(self.pool.config.retry, self.attempts_retried, self._rng)

    def done(self) -> None:
        """The request is over: its retries leave the budget."""
        budget = self._budget
        if budget is not None:
            for _ in range(self.retries):
                budget.give_back()
        self.retries = 0


class Router:
    """Builds plans: the model's attempt limit, and one retry budget per model."""

    def __init__(self, max_attempts: int | None = None, seed: int | None = None) -> None:
        self.max_attempts = max_attempts  # None: each model's ``retry.max_attempts``
        # Per model: the pool it was resolved for, its attempt limit and its retry budget
        # (one dict lookup per request; a reloaded pool keeps its model's budget).
        self._models: dict[str, tuple[Pool, int, RetryBudget]] = {}
        self._rng = random.Random(seed)

    def _of(self, pool: Pool) -> tuple[Pool, int, RetryBudget]:
        entry = self._models.get(pool.model)
        if entry is None or entry[0] is not pool:
            retry = pool.config.retry
            budget = entry[2] if entry is not None else RetryBudget()
            budget.percent, budget.floor = retry.budget_percent, retry.min_concurrent_retries
            entry = (pool, self.max_attempts or retry.max_attempts, budget)
            self._models[pool.model] = entry
        return entry

    def budget(self, pool: Pool) -> RetryBudget:
        return self._of(pool)[2]

    def plan(self, pool: Pool, facts: RoutingFacts) -> Plan:
        entry = self._models.get(pool.model)
        if entry is None or entry[0] is not pool:
            entry = self._of(pool)
        return Plan(pool, facts, entry[1], entry[2], self._rng)
