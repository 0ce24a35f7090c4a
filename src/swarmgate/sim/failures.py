"""Failure injection: what should go wrong with one request, decided before it is served.

Two sources: the model profile's rates (drawn from the server's seeded RNG, so a run is
reproducible), and, only when the simulator runs with ``testing=True``, the request header
``X-Sim-Fail`` (comma-separated: ``error:503``, ``hang``, ``reset:N``, ``slow:MS``, ``garbage``,
``disconnect``). The header wins over the profile. Acting on the plan is ``server``'s job.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from swarmgate.errors import BadRequest
from swarmgate.sim.profile import FailureProfile

HEADER = "X-Sim-Fail"


@dataclass(frozen=True, slots=True)
class FailurePlan:
    error_status: int | None = None  # respond with this status and an OpenAI error body
    hang: bool = False  # never respond; wait for the client to go away
    reset_after: int | None = None  # abort the connection after this many chunks
    slow_ms: float = 0.0  # delay the first byte
    garbage: bool = False  # 200 with a body that is not JSON
    disconnect: bool = False  # close the connection before any header

    @property
    def is_empty(self) -> bool:
        return self == NO_FAILURE


NO_FAILURE = FailurePlan()


def _number(kind: str, arg: str) -> float:
    try:
        value = float(arg)
    except ValueError:
        raise BadRequest(f"{HEADER}: {kind} needs a number, got {arg!r}") from None
    if value < 0:
        raise BadRequest(f"{HEADER}: {kind} must not be negative")
    return value


def _directive(plan: FailurePlan, kind: str, arg: str) -> FailurePlan:
    if kind == "error":
        status = int(_number(kind, arg or "500"))
        if not 400 <= status <= 599:
            raise BadRequest(f"{HEADER}: error status must be 4xx or 5xx")
        return replace(plan, error_status=status)
    if kind == "reset":
        return replace(plan, reset_after=int(_number(kind, arg or "0")))
    if kind == "slow":
        return replace(plan, slow_ms=_number(kind, arg))
    if arg:
        raise BadRequest(f"{HEADER}: {kind} takes no argument")
    if kind == "hang":
        return replace(plan, hang=True)
    if kind == "garbage":
        return replace(plan, garbage=True)
    if kind == "disconnect":
        return replace(plan, disconnect=True)
    raise BadRequest(f"{HEADER}: unknown directive {kind!r}")


def parse_header(value: str) -> FailurePlan:
    """Parse ``X-Sim-Fail``; an unknown directive is a 400 so that a typo never passes
    silently as "no failure"."""
    plan = NO_FAILURE
    for item in value.split(","):
        kind, _, arg = item.strip().partition(":")
        if kind:
            plan = _directive(plan, kind.lower(), arg.strip())
    return plan


def draw(profile: FailureProfile, rng: random.Random) -> FailurePlan:
    """At most one of error / hang / reset, with the profile's probabilities."""
    if profile.error_rate + profile.hang_rate + profile.reset_rate > 0:
        u = rng.random()
        if u < profile.error_rate:
            return FailurePlan(
                error_status=profile.error_status, slow_ms=profile.slow_first_byte_ms
            )
        u -= profile.error_rate
        if u < profile.hang_rate:
            return FailurePlan(hang=True)
        u -= profile.hang_rate
        if u < profile.reset_rate:
            return FailurePlan(
                reset_after=profile.reset_after_chunks, slow_ms=profile.slow_first_byte_ms
            )
    if profile.slow_first_byte_ms:
        return FailurePlan(slow_ms=profile.slow_first_byte_ms)
    return NO_FAILURE
