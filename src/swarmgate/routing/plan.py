"""A request's plan: which deployments to try, in order, and how many times.

The plan picks lazily, one deployment per attempt, so that each pick sees the in-flight counts
of the moment: the balancer chooses among the pool's deployments that have capacity and have
not been tried for this request. Another attempt is made only when the previous one never
reached its deployment (``may_retry``); fallback models will extend the plan here.
"""

from __future__ import annotations

from swarmgate.errors import NoDeployment
from swarmgate.routing.balancers import RoutingFacts
from swarmgate.routing.fleet import DeploymentState, Pool

MAX_ATTEMPTS = 2


class Plan:
    __slots__ = ("_facts", "_limit", "pool", "tried")

    def __init__(self, pool: Pool, facts: RoutingFacts, max_attempts: int = MAX_ATTEMPTS) -> None:
        self.pool = pool
        self._facts = facts
        self._limit = min(max_attempts, len(pool.members))
        self.tried: list[DeploymentState] = []

    def next(self) -> DeploymentState:
        """The deployment for the next attempt; ``NoDeployment`` if none can take it now."""
        pool = self.pool
        tried = self.tried
        members = pool.members
        if not tried and len(members) == 1:  # the common first pick: no balancer to consult
            only = members[0]
            if only.has_capacity:
                tried.append(only)
                return only
        candidates = [m for m in members if m.has_capacity and m not in tried]
        if not candidates:
            raise NoDeployment(
                f"no deployment of model {pool.model!r} can take the request now "
                f"({len(pool.members)} configured, all busy or unavailable)"
            )
        chosen = candidates[pool.balancer.choose(candidates, self._facts)]
        tried.append(chosen)
        return chosen

    def take(self, state: DeploymentState) -> DeploymentState:
        """A deployment the next attempt goes to without a pick: its slot was handed over."""
        self.tried.append(state)
        return state

    def may_retry(self) -> bool:
        """Whether another deployment may be tried after an attempt that never reached its own."""
        return len(self.tried) < self._limit


class Router:
    """Builds plans; the seam where retry budgets and fallback chains will be decided."""

    def __init__(self, max_attempts: int = MAX_ATTEMPTS) -> None:
        self.max_attempts = max_attempts

    def plan(self, pool: Pool, facts: RoutingFacts) -> Plan:
        return Plan(pool, facts, self.max_attempts)
