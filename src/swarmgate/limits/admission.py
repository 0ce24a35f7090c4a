"""``Admission``: the stage between authorize and the call that applies every limit.

For each request it finds the limits that apply (``plan``, cached per caller, model and
route): the caller's tier with the key's own overrides, its owner's, its client IP's when it
is anonymous, the model's, the endpoint's and the gateway's. It reserves the request's tokens
(a bounded estimate of the prompt, ``len(body) / 4``, plus ``max_tokens`` or
``max_completion_tokens`` or ``limits.default_max_tokens``), and charges all the limits in one
step of the counter store: all or none. An admitted request holds a ``Grant`` on the exchange
until ``Accounting.finish`` settles it; a refused one gets a 429 with ``Retry-After``.

The hot path: with no limit configured ``admit`` returns at once; with in-process counters it
decides synchronously and returns None (no coroutine, no task); only with Redis does it return
an awaitable (the store coalesces the admissions of one loop tick into one round trip).
"""

from __future__ import annotations

import itertools
import math
import os
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, NamedTuple

from swarmgate.auth.ip import Networks, client_ip
from swarmgate.errors import (
    NoDeployment,
    QuotaExceeded,
    RateLimited,
    RequestsLimited,
    ServiceUnavailable,
    StoreError,
    TokensLimited,
)
from swarmgate.limits import budget
from swarmgate.limits.capacity import CapacityLine, Place
from swarmgate.limits.grant import Grant, Shown, duration_text, shown_of
from swarmgate.limits.tiers import Limits, LimitSet
from swarmgate.observability.metrics import Metrics
from swarmgate.store import names
from swarmgate.store.counters import MemoryCounters
from swarmgate.store.redis_counters import RedisCounters
from swarmgate.store.usage import UsageFilter, UsageStore
from swarmgate.types import Check, CheckKind, CounterStore, Principal, Receive, Verdict

if TYPE_CHECKING:  # the pipeline sits above: only its record's type is named here
    from swarmgate.pipeline.exchange import Exchange
    from swarmgate.pipeline.request import InferenceRequest

WINDOWS = (("rpm", 60.0), ("rph", 3600.0), ("rpd", 86400.0))
TOKEN_WINDOWS = (("tpm", 60.0), ("tpd", 86400.0))
BUDGETS = (("daily_budget", budget.DAY), ("monthly_budget", budget.MONTH))
PLAN_CACHE = 10_000  # plans kept; past it the cache starts over
# Answers with usage (``responses``: the Responses API, translated or passed through).
TOKEN_ROUTES = frozenset({"chat", "completions", "embeddings", "responses"})


class Plan(NamedTuple):
    checks: tuple[Check, ...]
    tier: str  # the metrics label
    tokens: str  # which tokens count: input, output or total
    shown: tuple[Shown, ...]  # what the x-ratelimit-* headers describe
    capacity: int = 0  # the model's capacity it was compiled for (with Redis)


def checks_of(limits: LimitSet, ident: str, scope: str, lease_seconds: float) -> list[Check]:
    """The checks of one scope's limits, each on its own counter."""
    base = names.LIMITS + ident + ":"
    out = []
    if limits.rps is not None:
        burst = limits.burst or max(1, math.floor(limits.rps))
        out.append(Check(CheckKind.RATE, base + "rps", limits.rps, 1 / limits.rps, burst, "rps"))
    for name, window in WINDOWS:
        limit = getattr(limits, name)
        if limit is not None:
            out.append(Check(CheckKind.REQUESTS, base + name, limit, window, 1, name))
    for name, window in TOKEN_WINDOWS:
        limit = getattr(limits, name)
        if limit is not None:
            out.append(Check(CheckKind.TOKENS, base + name, limit, window, 1, name))
    if limits.concurrent is not None:
        out.append(
            Check(
                CheckKind.CONCURRENT,
                base + "concurrent",
                limits.concurrent,
                lease_seconds,
                1,
                "concurrent",
            )
        )
    for name, period in BUDGETS:
        limit = getattr(limits, name)
        if limit is not None:
            out.append(Check(CheckKind.SPEND, base + name, limit, period, 1, name))
    return [c._replace(scope=scope) for c in out]


def reservation(request: InferenceRequest, route: str, kind: str, default_max: int) -> int:
    """The tokens a request may use at most, as counted by ``kind``: cheap and bounded (the
    body's bytes / 4 overestimates the prompt; the answer's bound is the client's own)."""
    if route not in TOKEN_ROUTES:
        return 0
    prompt = len(request.raw) // 4 + 1
    answer = 0
    if route != "embeddings":
        payload = request.payload
        # The Responses API's bound, for a request passed through as the client wrote it.
        named = (
            payload.get("max_completion_tokens")
            or payload.get("max_tokens")
            or payload.get("max_output_tokens")
        )
        if isinstance(named, int) and not isinstance(named, bool) and named > 0:
            answer = named
        else:
            answer = default_max
    if kind == "input":
        return prompt
    if kind == "output":
        return answer
    return prompt + answer


class Admission:
    def __init__(
        self,
        limits: Limits | None = None,
        counters: CounterStore | None = None,
        metrics: Metrics | None = None,
        trusted_proxies: Networks | None = None,
        line: CapacityLine | None = None,
    ) -> None:
        self.limits = limits = limits or Limits()
        self.counters = counters = counters or MemoryCounters()
        self.metrics = metrics or Metrics()
        self.active = limits.any_limit
        self._memory = counters if isinstance(counters, MemoryCounters) else None
        self._trusted = trusted_proxies or Networks()
        self._plans: dict[tuple[object, ...], Plan] = {}
        # A lease names its replica: with Redis, the one the heartbeats mark alive.
        replica = counters.replica_id if isinstance(counters, RedisCounters) else None
        self._replica = (replica or os.urandom(6).hex()) + ":"
        self._seq = itertools.count()
        # With Redis: each model's capacity is taken at admission, across replicas.
        self.line = line

    def configure(self, limits: Limits) -> None:
        """A reloaded config's limits and tiers: the plans are compiled again, the counters
        (and what they have counted) stay, and grants held settle as they were taken."""
        self.limits = limits
        self.active = limits.any_limit
        self._plans = {}

    def admit(self, x: Exchange, receive: Receive | None = None) -> Awaitable[None] | None:
        """None when decided already (no limit, or in-process counters); else an awaitable
        that decides. Raises ``RateLimited`` (429) or ``ServiceUnavailable`` (503);
        ``receive`` (the request's) lets a request waiting for capacity see its client go."""
        if not self.active:
            return None
        plan = self.plan(x)
        if not plan.checks:
            return None
        request = x.request
        assert request is not None, "admission runs after parse"
        tokens = reservation(request, x.route.name, plan.tokens, self.limits.default_max_tokens)
        lease = self._replica + str(next(self._seq))
        memory = self._memory
        if memory is not None:
            self._decide(x, plan, memory.take_now(plan.checks, tokens, lease), lease, tokens)
            return None
        return self._admit(x, plan, tokens, lease, receive)

    async def _admit(
        self, x: Exchange, plan: Plan, tokens: int, lease: str, receive: Receive | None
    ) -> None:
        try:
            verdict = await self.counters.take(plan.checks, tokens, lease)
            refused = verdict.refused
            if refused >= 0 and plan.checks[refused].kind is CheckKind.CAPACITY:
                verdict = await self._wait_for_capacity(x, plan, refused, tokens, lease, receive)
        except StoreError as exc:
            self.metrics.admission(plan.tier, "unavailable")
            raise ServiceUnavailable(
                "the rate limiter is unavailable; try again shortly",
                headers={"retry-after": "1"},
            ) from exc
        self._decide(x, plan, verdict, lease, tokens)

    async def _wait_for_capacity(
        self, x: Exchange, plan: Plan, at: int, tokens: int, lease: str, receive: Receive | None
    ) -> Verdict:
        """The model is full across the fleet: wait in its line, by the tier's bounds."""
        assert self.line is not None and x.pool is not None and x.principal is not None
        name = x.principal.tier
        bounds = self.limits.queue.get(name)
        config = x.pool.config
        max_wait = bounds.max_wait if bounds and bounds.max_wait is not None else None
        max_length = bounds.max_length if bounds and bounds.max_length is not None else None
        place = Place(
            x.pool.model,
            plan.tier,
            self.limits.tier(name).priority,
            config.queue_timeout if max_wait is None else max_wait,
            config.queue_size if max_length is None else max_length,
        )
        return await self.line.wait(plan.checks, at, tokens, lease, place, receive)

    def _decide(self, x: Exchange, plan: Plan, verdict: Verdict, lease: str, tokens: int) -> None:
        metrics = self.metrics
        if verdict.refused < 0:
            x.grant = Grant(
                self.counters,
                plan.checks,
                verdict,
                lease,
                tokens,
                plan.tokens,
                plan.tier,
                plan.shown,
            )
            metrics.admitted(plan.tier, tokens)
            return
        check = plan.checks[verdict.refused]
        if check.kind is CheckKind.CAPACITY:  # only when the line could not be waited in
            raise NoDeployment(
                f"model {x.model!r} is at capacity across the fleet; retry later",
                headers={"retry-after": "1"},
            )
        metrics.admission(plan.tier, "refused")
        metrics.limit_exceeded(plan.tier, check.name, check.scope)
        raise refusal(check, verdict.wait, tokens)

    async def restore_budgets(self, usage: UsageStore) -> int:
        """Give the budgets' counters what the ledger holds for the current day and month,
        per key, owner and model and for the whole gateway (at start: in-process counters
        begin empty, and Redis may have lost them). Counters that exist are kept. How many
        counters were set."""
        if not self.active:
            return 0
        now = time.time()
        spent: dict[str, tuple[float, float]] = {}
        for name, period in BUDGETS:
            period_name, left = budget.current(period, now)
            since = budget.start_of(period, now)
            rows = await usage.report(
                UsageFilter(since, math.inf), ("key", "owner", "model"), bucket=None
            )
            totals: dict[str, float] = {}
            for row in rows:
                for ident in (
                    "key:" + row["key"] if row["key"] else None,
                    "owner:" + row["owner"],
                    "model:" + row["model"] if row["model"] else None,
                    "global",
                ):
                    if ident is not None:
                        totals[ident] = totals.get(ident, 0.0) + row["cost"]
            suffix = f":{name}:{period_name}"
            for ident, total in totals.items():
                if total > 0:
                    spent[names.LIMITS + ident + suffix] = (total, left)
        return await self.counters.restore_spend(spent)

    def plan(self, x: Exchange) -> Plan:
        p = x.principal
        assert p is not None and x.pool is not None, "admission runs after authorize"
        ip = None
        if p.via == "anonymous":
            ip = client_ip(x.peer, x.head.forwarded_for, self._trusted)
        pool = x.pool
        key = (p.key_id or p.subject, p.via, p.tier, p.limits, pool.model, x.route.name, ip)
        plan = self._plans.get(key)
        if plan is None or (self.line is not None and plan.capacity != pool.capacity):
            if len(self._plans) >= PLAN_CACHE:
                self._plans.clear()
            plan = self._plans[key] = self._compile(p, pool.model, pool.capacity, x.route.name, ip)
        return plan

    def _compile(self, p: Principal, model: str, capacity: int, route: str, ip: str | None) -> Plan:
        limits, lease = self.limits, self.limits.lease_seconds
        tiers = limits.all_tiers()
        tier_name = p.tier if p.tier in tiers else "default"
        checks: list[Check] = []
        kinds: list[str] = []
        if ip is not None:
            checks += checks_of(limits.anonymous, "ip:" + ip, "ip", lease)
            kinds.append(limits.anonymous.tokens)
        else:
            own: LimitSet = tiers[tier_name]
            if p.limits:
                own = own.merged(LimitSet.model_validate(dict(p.limits)))
                tier_name = tier_name if own == tiers[tier_name] else "custom"
            ident = "key:" + p.key_id if p.key_id else f"{p.via}:{p.subject}"
            checks += checks_of(own, ident, "key", lease)
            checks += checks_of(limits.owner, "owner:" + p.subject, "owner", lease)
            kinds += (own.tokens, limits.owner.tokens)
        for scope, ident, scoped in (
            ("model", "model:" + model, limits.models.get(model)),
            ("endpoint", "endpoint:" + route, limits.endpoints.get(route)),
            ("global", "global", limits.global_),
        ):
            if scoped is not None:
                checks += checks_of(scoped, ident, scope, lease)
                kinds.append(scoped.tokens)
        if self.line is not None:
            # Last: a request refused by its own limits never waits for the model.
            checks.append(
                Check(
                    CheckKind.CAPACITY,
                    names.LIMITS + "pool:" + model,
                    capacity,
                    lease,
                    1,
                    "capacity",
                    "pool",
                )
            )
        # One reservation per request: counted as the first scope's (the caller's) kind.
        kind = kinds[0] if kinds else "total"
        return Plan(tuple(checks), tier_name, kind, shown_of(checks), capacity)


def refusal(check: Check, wait: float, tokens: int) -> RateLimited:
    """The 429 of a refused check: OpenAI's body, ``Retry-After`` and ``retry-after-ms``."""
    error: RateLimited
    what = {"key": "this key", "ip": "this client"}.get(check.scope, f"the {check.scope}")
    if check.kind is CheckKind.SPEND:
        # OpenAI's answer to an exhausted quota; retrying before the period ends is useless.
        period = "daily" if check.period == budget.DAY else "monthly"
        error = QuotaExceeded(
            f"You exceeded your current quota: the {period} budget of {what} "
            f"({check.limit:g}) is spent. It renews in {duration_text(wait)} (UTC).",
            headers={"x-should-retry": "false"},
        )
    elif check.kind is CheckKind.TOKENS:
        if math.isinf(wait):
            error = TokensLimited(
                f"Request too large for {what} on {check.name}: limit {check.limit:g}, "
                f"requested {tokens} tokens (prompt estimate plus max_tokens).",
                headers={"x-should-retry": "false"},
            )
            return error
        error = TokensLimited(
            f"Rate limit reached for {what} on tokens ({check.name}): limit {check.limit:g}. "
            f"Please try again in {wait:.3g}s."
        )
    elif check.kind is CheckKind.CONCURRENT:
        wait = 1.0  # a slot frees whenever a request ends; not known in advance
        error = RequestsLimited(
            f"Too many requests in flight for {what}: limit {check.limit:g}. "
            "Please try again shortly."
        )
    else:
        limit = f"{check.limit:g}" if check.kind is CheckKind.REQUESTS else f"{check.limit:g}/s"
        error = RequestsLimited(
            f"Rate limit reached for {what} on requests ({check.name}): limit {limit}. "
            f"Please try again in {wait:.3g}s."
        )
    error.headers["retry-after"] = str(max(1, math.ceil(wait)))
    error.headers["retry-after-ms"] = str(max(1, math.ceil(wait * 1000)))
    return error
