"""Budget periods: the calendar day or month (UTC) a spend counter belongs to.

A budget (``daily_budget``, ``monthly_budget``) is a sum of the costs of the requests that
ended in the current UTC day or month. Its counter's key ends with the period's name
(``d20426`` for a day, ``m202612`` for a month), so a new period starts a new counter and the
old one expires: no reset job, and every replica agrees on the period by the wall clock.

Pure and imports nothing of ours: the counter stores and the admission both use it.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime

DAY = 86400.0  # a check's ``period`` for a daily budget
MONTH = 31 * 86400.0  # ... for a monthly one (the longest month: a counter's lifetime)


@functools.lru_cache(maxsize=64)
def _period(period: float, second: int) -> tuple[str, float, float]:
    if period == DAY:
        day = second // 86400
        return f"d{day}", day * 86400.0, (day + 1) * 86400.0
    at = datetime.fromtimestamp(second, UTC)
    start = datetime(at.year, at.month, 1, tzinfo=UTC)
    end = datetime(at.year + at.month // 12, at.month % 12 + 1, 1, tzinfo=UTC)
    return f"m{at.year}{at.month:02d}", start.timestamp(), end.timestamp()


def current(period: float, now: float) -> tuple[str, float]:
    """The name of the period ``now`` (epoch seconds) is in, and the seconds left in it."""
    name, _, end = _period(period, int(now))
    return name, end - now


def start_of(period: float, now: float) -> float:
    """When the period ``now`` is in began (epoch seconds): what a rebuild sums from."""
    return _period(period, int(now))[1]
