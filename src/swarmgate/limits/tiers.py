"""The ``limits:`` section: named tiers and the limits of models, endpoints, owners, anonymous
clients and the whole gateway, as frozen settings.

Like ``seedconfig``, this module imports nothing of ours: ``config.Settings`` holds a
``Limits``, so it must sit below the config loader.

Every limit is optional (absent: unlimited). A ``LimitSet`` names one scope's limits:

- ``rps`` (+ ``burst``): a GCRA rate per second, ``burst`` requests at once at most;
- ``rpm`` / ``rph`` / ``rpd``: at most that many requests in any 60 s / 3600 s / 86400 s;
- ``tpm`` / ``tpd``: at most that many tokens in any 60 s / 86400 s, counting ``tokens``
  (``input``, ``output`` or ``total``): reserved at admission, settled to the usage;
- ``concurrent``: requests in flight at once (leases that expire after ``lease_seconds``);
- ``daily_budget`` / ``monthly_budget``: the most that may be spent (in the deployments'
  price unit) in the current UTC day / month: a request is refused once it is spent
  (``insufficient_quota``), and each request's cost is charged when it ends.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Count = Annotated[int, Field(ge=1)]
Money = Annotated[float, Field(gt=0)]
TokenKind = Literal["input", "output", "total"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class LimitSet(_Frozen):
    rps: Annotated[float, Field(gt=0)] | None = None
    burst: Count | None = None  # requests at once under ``rps``; default: max(1, rps)
    rpm: Count | None = None
    rph: Count | None = None
    rpd: Count | None = None
    tpm: Count | None = None
    tpd: Count | None = None
    tokens: TokenKind = "total"
    concurrent: Count | None = None
    daily_budget: Money | None = None
    monthly_budget: Money | None = None

    @model_validator(mode="after")
    def _burst_needs_rate(self) -> LimitSet:
        if self.burst is not None and self.rps is None:
            raise ValueError("burst is the burst of rps: set rps too")
        return self

    @property
    def empty(self) -> bool:
        return (
            not any((self.rps, self.rpm, self.rph, self.rpd, self.tpm, self.tpd, self.concurrent))
            and not self.budgeted
        )

    @property
    def budgeted(self) -> bool:
        return self.daily_budget is not None or self.monthly_budget is not None

    def merged(self, override: LimitSet) -> LimitSet:
        """These limits with every field ``override`` sets replacing this one's."""
        return self.model_copy(update=override.model_dump(exclude_unset=True))


class Tier(LimitSet):
    # For the priority queues of fleet saturation: higher is served first.
    priority: int = 0


# Seed 001's tiers; ``default`` (keys without a tier) is unlimited unless configured.
DEFAULT_TIERS: dict[str, Tier] = {
    "default": Tier(),
    "free": Tier(rpm=10, rph=100, concurrent=2, priority=0),
    "pro": Tier(rpm=100, rph=1000, concurrent=10, priority=10),
    "enterprise": Tier(rpm=1000, rph=10000, concurrent=50, priority=20),
}


class TierQueue(_Frozen):
    """A tier's own bounds on the line for a slot of a saturated model; unset: the model's
    ``queue_timeout`` and ``queue_size``."""

    max_wait: Annotated[float, Field(ge=0)] | None = None
    max_length: Annotated[int, Field(ge=0)] | None = None


class Limits(_Frozen):
    # False: nothing is limited (and several workers without Redis are allowed).
    enabled: bool = True
    # Merged over the shipped tiers: a tier named here replaces the shipped one of that name.
    tiers: dict[str, Tier] = Field(default_factory=dict)
    models: dict[str, LimitSet] = Field(default_factory=dict)  # shared by every caller
    endpoints: dict[str, LimitSet] = Field(default_factory=dict)  # chat, embeddings, ...
    owner: LimitSet = LimitSet()  # for each owner: all of an owner's keys together
    anonymous: LimitSet = LimitSet()  # for each client IP of callers without a key
    global_: LimitSet = Field(LimitSet(), alias="global")  # the whole gateway
    # Tokens reserved for the answer when a request names no max_tokens.
    default_max_tokens: Count = 1024
    # A concurrency slot held longer than this is freed anyway (a replica that died).
    lease_seconds: Annotated[float, Field(gt=0)] = 900.0
    # With Redis: the longest an admission waits for it, and what happens when it fails.
    redis_timeout: Annotated[float, Field(gt=0, le=5)] = 0.075
    redis_failure: Literal["fail_open", "fail_closed"] = "fail_open"
    # Replicas sharing Redis; None: learned from the replicas' heartbeats in Redis.
    replicas: Count | None = None
    # With Redis: each model's capacity (its deployments' max_concurrent summed) holds across
    # replicas, taken at admission; a request that finds it full waits in one fleet-wide line.
    fleet_capacity: bool = True
    # Fleet saturation (the priority queues, by each tier's ``priority``): tier → the largest
    # share of a pool's slots its requests may hold while others wait, and its own line bounds.
    max_share: dict[str, Annotated[float, Field(gt=0, le=1)]] = Field(default_factory=dict)
    queue: dict[str, TierQueue] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _queued_tiers_exist_and_budgets_fit(self) -> Limits:
        tiers = self.all_tiers()
        problems = [
            f"limits.{section}.{tier}: not a tier (known: {', '.join(sorted(tiers))})"
            for section, names in (("max_share", self.max_share), ("queue", self.queue))
            for tier in names
            if tier not in tiers
        ]
        # Budgets are rebuilt from the ledger at start, which records keys, owners and models.
        problems += [
            f"limits.{where}: budgets apply to tiers, keys, owners, models and global, not here"
            for where, scoped in (
                *((f"endpoints.{name}", s) for name, s in self.endpoints.items()),
                ("anonymous", self.anonymous),
            )
            if scoped.budgeted
        ]
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def all_tiers(self) -> dict[str, Tier]:
        return {**DEFAULT_TIERS, **self.tiers}

    def tier(self, name: str) -> Tier:
        """The tier of that name; an unknown name is ``default``'s."""
        tiers = self.all_tiers()
        return tiers.get(name) or tiers["default"]

    @property
    def any_budget(self) -> bool:
        """Whether a spend budget is set in the config (keys may set their own as well)."""
        sets = [*self.all_tiers().values(), *self.models.values(), self.owner, self.global_]
        return self.enabled and any(s.budgeted for s in sets)

    @property
    def any_limit(self) -> bool:
        """Whether any request could be limited."""
        if not self.enabled:
            return False
        sets = [*self.all_tiers().values(), *self.models.values(), *self.endpoints.values()]
        sets += [self.owner, self.anonymous, self.global_]
        return any(not s.empty for s in sets)
