"""A deployment's health as picks see it: breaker, probes and ejection; the retry budget."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swarmgate.config import CircuitBreaker, HealthCheck, Retry, parse_settings
from swarmgate.errors import DeploymentsDown, NoDeployment
from swarmgate.routing.balancers import RoutingFacts
from swarmgate.routing.breaker import CircuitState
from swarmgate.routing.fleet import DeploymentState, Fleet, Pool
from swarmgate.routing.health import DeploymentHealth
from swarmgate.routing.plan import Plan, RetryBudget, Router, backoff
from swarmgate.types import Outcome


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _pool(n: int = 2, clock: Clock | None = None, **model: Any) -> Pool:
    settings = parse_settings(
        {"models": {"m": {"deployments": [{"url": f"http://h{i}:1"} for i in range(n)], **model}}},
        {},
    )
    pool = Fleet(settings).resolve("m")
    if clock is not None:
        for m in pool.members:
            m.health.clock = clock
    return pool


def _picks(pool: Pool, count: int) -> list[str]:
    return [Plan(pool, RoutingFacts("m")).next().name for _ in range(count)]


def _pick_with_others_busy(pool: Pool, wanted: DeploymentState) -> str | None:
    """What a pick finds when every other deployment is at max_concurrent (whatever the
    balancer): ``wanted``'s name if it may take the request, else None."""
    others = [m for m in pool.members if m is not wanted]
    for m in others:
        m.in_flight = m.max_concurrent
    try:
        return Plan(pool, RoutingFacts("m")).next().name
    except NoDeployment:
        return None
    finally:
        for m in others:
            m.in_flight = 0


def test_an_open_circuit_is_not_picked_until_a_trial_closes_it() -> None:
    clock = Clock()
    pool = _pool(2, clock, circuit_breaker={"threshold": 2, "open_seconds": 30})
    sick, well = pool.members
    for _ in range(2):
        sick.observe(Outcome.UNREACHABLE)
    assert sick.health.circuit(clock.now) is CircuitState.OPEN and not sick.healthy
    assert set(_picks(pool, 6)) == {well.name}
    clock.now += 30
    assert sick.healthy  # half-open: usable for its trial
    assert _pick_with_others_busy(pool, sick) == sick.name  # the trial
    assert _pick_with_others_busy(pool, sick) is None  # one trial at a time
    sick.observe(Outcome.OK)  # the trial succeeded
    assert sick.health.routable and sick.health.breaker.state is CircuitState.CLOSED
    assert _pick_with_others_busy(pool, sick) == sick.name


def test_a_trial_that_fails_opens_the_circuit_again() -> None:
    clock = Clock()
    pool = _pool(2, clock, circuit_breaker={"threshold": 1, "open_seconds": 10})
    sick = pool.members[0]
    sick.observe(Outcome.TIMEOUT)
    clock.now += 10
    assert _pick_with_others_busy(pool, sick) == sick.name
    sick.observe(Outcome.SERVER_ERROR)
    assert sick.name not in _picks(pool, 4)
    assert _pick_with_others_busy(pool, sick) is None


def test_probes_take_a_deployment_out_and_readmit_it() -> None:
    clock = Clock()
    pool = _pool(2, clock, health_check={"unhealthy_threshold": 3, "healthy_threshold": 2})
    down = pool.members[0]
    for ok in (False, False):
        down.health.probed(ok)
    assert down.health.routable  # not yet: three in a row
    down.health.probed(False)
    assert not down.healthy and down.name not in _picks(pool, 4)
    down.health.probed(True)
    assert not down.healthy
    down.health.probed(True)
    assert down.healthy and _pick_with_others_busy(pool, down) == down.name


def test_a_recovered_deployment_need_not_wait_out_its_open_circuit() -> None:
    clock = Clock()
    pool = _pool(2, clock, health_check={"unhealthy_threshold": 1, "healthy_threshold": 1})
    dead = pool.members[0]
    for _ in range(5):
        dead.observe(Outcome.UNREACHABLE)
    dead.health.probed(False)
    assert dead.health.breaker.state is CircuitState.OPEN
    dead.health.probed(True)  # 1 s later, not 60
    assert dead.health.circuit(clock.now) is CircuitState.HALF_OPEN
    assert _pick_with_others_busy(pool, dead) == dead.name


def test_a_good_probe_of_a_deployment_that_never_went_down_keeps_its_circuit_open() -> None:
    clock = Clock()
    pool = _pool(2, clock)
    erring = pool.members[0]  # answers 500s, but its /health says 200
    for _ in range(5):
        erring.observe(Outcome.SERVER_ERROR)
    erring.health.probed(True)
    assert erring.health.breaker.state is CircuitState.OPEN


def test_every_deployment_down_is_the_fallback_response_and_busy_is_not() -> None:
    pool = _pool(
        2,
        fallback={"status": 503, "body": {"error": "down for now"}, "retry_after": 30},
        circuit_breaker={"threshold": 1},
    )
    for m in pool.members:
        m.in_flight = m.max_concurrent
    with pytest.raises(NoDeployment) as busy:
        Plan(pool, RoutingFacts("m")).next()
    assert type(busy.value) is NoDeployment  # busy: the caller may wait in line
    for m in pool.members:
        m.in_flight = 0
        m.observe(Outcome.UNREACHABLE)
    with pytest.raises(DeploymentsDown) as down:
        Plan(pool, RoutingFacts("m")).next()
    assert down.value.status == 503 and down.value.body() == {"error": "down for now"}
    assert down.value.headers == {"retry-after": "30"}


def test_the_breaker_can_be_turned_off_per_deployment() -> None:
    settings = parse_settings(
        {
            "models": {
                "m": {
                    "deployments": [
                        {"url": "http://a:1", "circuit_breaker": {"enabled": False}},
                        {"url": "http://b:1"},
                    ],
                    "circuit_breaker": {"threshold": 1},
                }
            }
        },
        {},
    )
    fleet = Fleet(settings)
    a, b = fleet.resolve("m").members
    a.observe(Outcome.UNREACHABLE)
    b.observe(Outcome.UNREACHABLE)
    assert a.health.routable and not b.health.routable
    # Turned off by a reload: an open circuit closes.
    off = {"url": "http://b:1", "circuit_breaker": {"enabled": False}}
    fleet.replace(parse_settings({"models": {"m": {"deployments": [off]}}}, {}))
    assert b.health.routable and b.health.breaker.state is CircuitState.CLOSED


def test_the_retry_budget_has_a_floor_and_a_share_of_the_requests_in_flight() -> None:
    budget = RetryBudget(percent=20, floor=3)
    for _ in range(3):
        assert budget.allows(0)
        budget.take()
    assert not budget.allows(10)  # 20% of 10 is 2: the floor of 3 holds
    assert budget.allows(20)  # 20% of 20 is 4
    budget.give_back()
    assert budget.allows(0)


def test_a_plan_retries_on_other_deployments_within_attempts_and_budget() -> None:
    pool = _pool(3, retry={"max_attempts": 2, "min_concurrent_retries": 1, "budget_percent": 0})
    router = Router(seed=1)
    plan = router.plan(pool, RoutingFacts("m"))
    first = plan.next()
    assert plan.retry() is not None
    second = plan.next()
    assert second is not first
    assert plan.retry() is None  # two attempts in all
    other = router.plan(pool, RoutingFacts("m"))
    other.next()
    assert other.retry() is None  # the budget's one concurrent retry is taken
    plan.done()
    assert other.retry() is not None


@given(st.integers(1, 10), st.floats(0, 1), st.floats(0, 5))
def test_backoff_is_jittered_below_its_exponential_bound(
    retries: int, base: float, cap: float
) -> None:
    retry = Retry(backoff_base=min(base, cap), backoff_max=cap)
    wait = backoff(retry, retries, random.Random(retries))
    assert 0 <= wait <= min(cap, retry.backoff_base * 2 ** (retries - 1))


def test_configuration_is_validated_with_clear_messages() -> None:
    from swarmgate.errors import ConfigError

    bad = {
        "circuit_breaker": {"threshold": 0},
        "health_check": {"path": "health", "timeout": 40},
        "outlier_detection": {"max_ejection_percent": 120},
        "retry": {"max_attempts": 0, "backoff_base": 1, "backoff_max": 0.5},
        "fallback": {"status": 200},
        "deployments": [{"url": "http://a:1"}],
    }
    with pytest.raises(ConfigError) as exc:
        parse_settings({"models": {"m": bad}}, {})
    text = "\n".join(exc.value.problems)
    for expected in (
        "models.m.circuit_breaker.threshold: Input should be greater than or equal to 1",
        "models.m.health_check.path: must be a path such as /health or /v1/models",
        "models.m.outlier_detection.max_ejection_percent:",
        "models.m.retry.max_attempts:",
        "models.m.fallback.status:",
    ):
        assert expected in text, text
    with pytest.raises(ConfigError, match=r"timeout .* must not exceed interval"):
        parse_settings(
            {
                "models": {
                    "m": {"health_check": {"timeout": 40}, "deployments": [{"url": "http://a:1"}]}
                }
            },
            {},
        )
    assert HealthCheck().interval == 30 and CircuitBreaker().open_seconds == 60


def test_health_counts_nothing_per_request_but_integers() -> None:
    h = DeploymentHealth()
    for _ in range(3):
        h.observe(Outcome.OK)
    h.observe(Outcome.CLIENT_GONE)
    h.observe(Outcome.REFUSED)
    assert (h.ok, h.failed, h.consecutive, h.routable) == (4, 0, 0, True)
