"""Waiting for a slot of a saturated model, by tier: the call stage's side of ``SlotQueue``.

A request whose pool has no deployment below ``max_concurrent`` waits in the pool's queue
(``limits/queue.py``) for a slot handed over by a released lease, at most its tier's
``max_wait``, behind at most ``max_length`` others of its tier; past either it is refused
with a 503 and ``Retry-After``. A client that leaves while waiting leaves the line; a slot
handed to a request that is cancelled at that moment passes on to the next waiter, so none
leaks. A tier held to a share of the pool (``limits.max_share``) also waits while it holds
its share, even with slots free.

None of this runs while the fleet has room and no tier has a share: the call stage then
picks and leases as before.
"""

from __future__ import annotations

import asyncio
import math

from swarmgate.errors import DeploymentsDown, NoDeployment
from swarmgate.limits.queue import SlotQueue, TierPolicy, Waiter
from swarmgate.limits.tiers import Limits
from swarmgate.observability.metrics import Metrics
from swarmgate.pipeline.asgi import ClientGone, DisconnectWatch
from swarmgate.pipeline.exchange import Exchange
from swarmgate.routing.fleet import DeploymentState, Lease, TierLease
from swarmgate.routing.plan import Plan
from swarmgate.types import Receive


def tier_policies(limits: Limits) -> dict[str, TierPolicy]:
    """Each configured tier's policy; ``default`` always among them."""
    policies = {}
    for name, tier in limits.all_tiers().items():
        queue = limits.queue.get(name)
        policies[name] = TierPolicy(
            name,
            tier.priority,
            limits.max_share.get(name),
            queue.max_wait if queue else None,
            queue.max_length if queue else None,
        )
    return policies


class Queueing:
    def __init__(self, limits: Limits, metrics: Metrics) -> None:
        self.tiers = tier_policies(limits)
        self.default = self.tiers["default"]
        self.metrics = metrics
        # Read on every request: whether any tier is held to a share (then counted).
        self.shares = any(t.share is not None for t in self.tiers.values())

    def tier_of(self, x: Exchange) -> TierPolicy:
        principal = x.principal
        if principal is None:
            return self.default
        return self.tiers.get(principal.tier, self.default)

    def capped_tier(self, x: Exchange) -> TierPolicy | None:
        """The request's tier if it is held to a share of each pool."""
        tier = self.tier_of(x)
        return tier if tier.share is not None else None

    async def first_lease(
        self, x: Exchange, plan: Plan, receive: Receive, tier: TierPolicy
    ) -> Lease:
        """The first attempt's lease for ``tier``, which is held to a share of the pool: counted
        against it, after waiting in line if the tier holds its share or the pool is full."""
        if plan.pool.queue.may_hold(tier):
            try:
                state = plan.next()
            except DeploymentsDown:
                raise  # nothing to wait for: the fallback response
            except NoDeployment:
                return await self.wait(x, plan, receive, tier)
            return TierLease(state, tier)
        return await self.wait(x, plan, receive, tier)

    async def wait(
        self, x: Exchange, plan: Plan, receive: Receive, tier: TierPolicy | None = None
    ) -> Lease:
        """Wait in line for a slot of ``plan``'s pool; its lease, already taken by the plan,
        or ``NoDeployment`` (503, Retry-After) when the line is full or the wait too long."""
        tier = tier or self.tier_of(x)
        pool = plan.pool
        queue = pool.queue
        max_wait = pool.config.queue_timeout if tier.max_wait is None else tier.max_wait
        max_length = pool.config.queue_size if tier.max_length is None else tier.max_length
        if max_wait <= 0:
            raise self._refused(pool.model, tier, "full", max_wait, "no request may wait for it")
        principal = x.principal
        key = (principal.key_id or principal.subject) if principal else "-"
        loop = asyncio.get_running_loop()
        future: asyncio.Future[DeploymentState] = loop.create_future()
        waiter = queue.enter(tier, key, max_length, future, loop.time())
        if waiter is None:
            raise self._refused(
                pool.model, tier, "full", max_wait, f"{max_length} {tier.name}-tier requests wait"
            )
        self.metrics.queue_length(pool.model, tier.name, queue.lengths[tier.name])
        try:
            state = await self._await_slot(queue, waiter, max_wait, receive)
        finally:
            self.metrics.queue_length(pool.model, tier.name, queue.lengths[tier.name])
            self.metrics.queue_wait(tier.name, loop.time() - waiter.since)
        if state is None:
            raise self._refused(
                pool.model, tier, "timeout", max_wait, f"no slot freed within {max_wait:g} s"
            )
        plan.take(state)
        return _handed(state, tier)

    @staticmethod
    async def _await_slot(
        queue: SlotQueue[DeploymentState],
        waiter: Waiter[DeploymentState],
        max_wait: float,
        receive: Receive,
    ) -> DeploymentState | None:
        """The slot handed over, or None after ``max_wait``; ``ClientGone`` if the client left."""
        future = waiter.future
        client = DisconnectWatch(receive)
        try:
            async with asyncio.timeout(max_wait):
                return await future
        except TimeoutError:
            # The slot may have been handed over in the same tick as the timeout: take it.
            return _granted(future)
        except BaseException:
            # Cancelled (the client left, or shutdown) after a slot was handed over but before
            # it was taken: it passes on to the next waiter, or is freed.
            state = _granted(future)
            if state is not None:
                _handed(state, waiter.tier).release()
            if client.absorb():
                raise ClientGone from None
            raise
        finally:
            client.finish()
            queue.leave(waiter)

    def _refused(
        self, model: str, tier: TierPolicy, reason: str, max_wait: float, why: str
    ) -> NoDeployment:
        self.metrics.queue_rejected(model, tier.name, reason)
        return NoDeployment(
            f"model {model!r} is at capacity (every deployment busy) and {why}; retry later",
            headers={"Retry-After": str(max(1, math.ceil(max_wait)))},
        )


def _handed(state: DeploymentState, tier: TierPolicy) -> Lease:
    """The lease of a slot the queue handed over (counted in flight, and held for a share)."""
    return TierLease(state, tier, handed=True) if tier.share is not None else Lease.handed(state)


def _granted(future: asyncio.Future[DeploymentState]) -> DeploymentState | None:
    if future.done() and not future.cancelled():
        return future.result()
    return None
