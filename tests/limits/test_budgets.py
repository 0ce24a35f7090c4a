"""Spend budgets: the calendar periods, the counters (in process and in real Redis), and a
real gateway that refuses a key with ``insufficient_quota`` once its day's budget is spent,
still refuses it after a restart (rebuilt from the ledger), and admits it again when the key
is given a larger budget."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import openai
import pytest
import redis
from pydantic import ValidationError

from swarmgate.limits import budget
from swarmgate.limits.admission import refusal
from swarmgate.limits.tiers import Limits
from swarmgate.observability.metrics import Metrics
from swarmgate.store.counters import SWEEP_EVERY, MemoryCounters
from swarmgate.store.redis_counters import RedisCounters
from swarmgate.types import Check, CheckKind
from tests.limits.e2e import Upstream
from tests.limits.test_sdk import MESSAGES
from tests.plugins.processes import Gateway

DAILY = Check(CheckKind.SPEND, "k:daily_budget", 1.0, budget.DAY, 1, "daily_budget", "key")
MONTHLY = Check(CheckKind.SPEND, "k:monthly_budget", 2.0, budget.MONTH, 1, "monthly_budget")


def epoch(*parts: int) -> float:
    return datetime(*parts, tzinfo=UTC).timestamp()  # type: ignore[misc]


def test_periods_are_utc_days_and_calendar_months() -> None:
    name, left = budget.current(budget.DAY, epoch(2026, 12, 4, 23, 59, 30))
    assert name == f"d{int(epoch(2026, 12, 4) // 86400)}" and left == pytest.approx(30)
    assert budget.current(budget.DAY, epoch(2026, 12, 5))[0] != name
    assert budget.current(budget.MONTH, epoch(2026, 12, 31, 23, 59, 59)) == ("m202612", 1.0)
    assert budget.current(budget.MONTH, epoch(2027, 1, 1))[0] == "m202701"
    assert budget.current(budget.MONTH, epoch(2027, 2, 1))[1] == 28 * 86400
    assert budget.start_of(budget.MONTH, epoch(2026, 12, 17, 5)) == epoch(2026, 12, 1)


class Clocks:
    def __init__(self, wall: float) -> None:
        self.wall = wall

    def monotonic(self) -> float:
        return 1000.0

    def now(self) -> float:
        return self.wall


def test_a_budget_refuses_once_spent_until_the_period_ends() -> None:
    clocks = Clocks(epoch(2026, 12, 4, 12))
    counters = MemoryCounters(clocks.monotonic, wall=clocks.now)
    checks = (DAILY, MONTHLY)
    for cost in (0.6, 0.6):  # checked before, charged after: the one crossing it completes
        verdict = counters.take_now(checks, 0, "l")
        assert verdict.refused == -1
        counters.settle(checks, verdict, "l", 0, 0, cost)
    refused = counters.take_now(checks, 0, "l")
    assert refused.refused == 0 and refused.wait == pytest.approx(12 * 3600)
    clocks.wall = epoch(2026, 12, 5, 0, 0, 1)  # a new day; the month has 0.8 left
    admitted = counters.take_now(checks, 0, "l")
    assert admitted.refused == -1
    assert admitted.remaining == (1.0, pytest.approx(0.8))
    counters.settle(checks, admitted, "l", 0, 0, 0.9)
    assert counters.take_now(checks, 0, "l").refused == 1  # the month's 2.1 > 2.0
    clocks.wall = epoch(2027, 1, 1, 0, 0, 1)
    assert counters.take_now(checks, 0, "l").refused == -1


def test_a_spent_period_is_swept_and_restore_keeps_what_it_knows() -> None:
    clocks = Clocks(epoch(2026, 12, 4, 12))
    counters = MemoryCounters(clocks.monotonic, wall=clocks.now)
    day = budget.current(budget.DAY, clocks.wall)[0]
    other = "k2:daily_budget:" + day
    restored = asyncio.run(
        counters.restore_spend({DAILY.key + ":" + day: (5.0, 60.0), other: (0.5, 60.0)})
    )
    assert restored == 2
    assert counters.take_now((DAILY,), 0, "l").refused == 0  # 5.0 spent today
    again = asyncio.run(counters.restore_spend({DAILY.key + ":" + day: (0.0, 60.0)}))
    assert again == 0  # a counter it holds is not replaced by the ledger's older view
    clocks.wall += 86400
    for _ in range(SWEEP_EVERY):
        counters.take_now((), 0, "l")
    assert not counters._states  # yesterday's counters went


def test_budgets_only_where_the_ledger_can_rebuild_them() -> None:
    assert Limits.model_validate({"owner": {"monthly_budget": 100}}).any_budget
    assert not Limits().any_budget
    with pytest.raises(ValidationError, match="budgets apply to tiers"):
        Limits.model_validate({"endpoints": {"chat": {"daily_budget": 1}}})
    with pytest.raises(ValidationError, match="budgets apply to tiers"):
        Limits.model_validate({"anonymous": {"daily_budget": 1}})


def test_the_refusal_is_openais_insufficient_quota_and_not_retried() -> None:
    error = refusal(DAILY, 3725.0, 0)
    assert error.status == 429 and error.code == "insufficient_quota"
    assert error.type == "insufficient_quota"
    assert error.headers["x-should-retry"] == "false"
    assert error.headers["retry-after"] == "3725"
    assert "daily budget of this key (1) is spent" in str(error)


async def test_redis_budgets_checked_charged_and_restored(redis_url: str) -> None:
    counters = RedisCounters(redis_url, Metrics())
    await counters.start()
    plain = redis.Redis.from_url(redis_url)
    day = budget.current(budget.DAY, time.time())[0]
    try:
        for _ in range(2):
            verdict = await counters.take((DAILY,), 0, "l")
            assert verdict.refused == -1
            counters.settle((DAILY,), verdict, "l", 0, 0, 0.6)
        await counters.take((), 0, "flush")  # carries the settlements
        refused = await counters.take((DAILY,), 0, "l")
        assert refused.refused == 0 and 0 < refused.wait <= 86400
        assert float(plain.get(DAILY.key + ":" + day) or 0) == pytest.approx(1.2)
        assert 86400 < plain.pttl(DAILY.key + ":" + day) / 1000 <= 2 * 86400
        # Taken by the fallback while Redis was away: the cost still reaches Redis.
        other = DAILY._replace(key="k2:daily_budget")
        offline = counters.fallback.take_now((other,), 0, "f")
        counters.settle((other,), offline, "f", 0, 0, 0.25)
        await counters.take((), 0, "flush")
        assert float(plain.get(other.key + ":" + day) or 0) == pytest.approx(0.25)
        # Restored only where Redis has nothing (it lost them), never over what it holds.
        third = "k3:daily_budget:" + day
        set_count = await counters.restore_spend(
            {DAILY.key + ":" + day: (0.0, 60.0), third: (7.5, 60.0)}
        )
        assert set_count == 1 and float(plain.get(third) or 0) == 7.5
        assert float(plain.get(DAILY.key + ":" + day) or 0) == pytest.approx(1.2)
    finally:
        plain.close()
        await counters.close()


def admin(gw: Gateway, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        gw.url + path,
        data=json.dumps(body).encode(),
        headers={"authorization": f"Bearer {gw.admin_key}", "content-type": "application/json"},
        method=method,
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        answer: dict[str, Any] = json.loads(reply.read())
    return answer


def test_a_spent_budget_is_refused_across_a_restart_until_raised(
    gateway_factory: Callable[..., Gateway], tmp_path: Any
) -> None:
    upstream = Upstream()
    config = {
        "models": {"m": {"deployments": [{"url": upstream.url, "cost_per_request": 0.4}]}},
        "limits": {"tiers": {"capped": {"daily_budget": 1.0, "rpm": 100}}},
        "store": {"url": f"sqlite+aiosqlite:///{tmp_path / 'budgets.db'}"},
        "ledger": {"flush_interval": 0.1},
    }
    try:
        gw = gateway_factory(config)
        made = admin(gw, "POST", "/admin/keys", {"name": "b", "owner": "b", "tier": "capped"})
        secret, key_id = made["secret"], made["key"]["id"]
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key=secret, max_retries=3)
        for _ in range(3):  # 0, 0.4 and 0.8 spent before each: admitted
            client.chat.completions.create(model="m", messages=MESSAGES)
        served = upstream.served
        started = time.monotonic()
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(model="m", messages=MESSAGES)
        assert refused.value.code == "insufficient_quota"
        assert time.monotonic() - started < 2  # the SDK did not retry (x-should-retry)
        assert upstream.served == served  # refused before it reached a model
        gw.stop()
        # A new process on the same store: the day's spend comes back from the ledger.
        again = gateway_factory(config, env=gw.env)
        client = openai.OpenAI(base_url=again.url + "/v1", api_key=secret, max_retries=0)
        with pytest.raises(openai.RateLimitError, match="daily budget"):
            client.chat.completions.create(model="m", messages=MESSAGES)
        # The key's own, larger budget (the admin API; the CLI's --daily-budget is the same).
        admin(again, "PATCH", f"/admin/keys/{key_id}", {"limits": {"daily_budget": 5}})
        deadline = time.monotonic() + 10
        while True:  # the cached principal is dropped within moments
            try:
                client.chat.completions.create(model="m", messages=MESSAGES)
                break
            except openai.RateLimitError:
                assert time.monotonic() < deadline, "the raised budget never applied"
                time.sleep(0.2)
    finally:
        upstream.close()
