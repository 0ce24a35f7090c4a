"""Passive outlier detection: which deployments of a pool to eject, from what traffic saw.

After Envoy's outlier detection, read rather than copied. Every ``interval`` seconds the sweep
looks at each deployment's window (attempts that succeeded and failed since the last sweep, and
its failures in a row now): one with ``consecutive_failures`` in a row, or with at least
``min_requests`` attempts of which a share ``failure_rate`` or more failed, is an outlier. The
worst outliers are ejected first, and never more than ``max_ejection_percent`` of the pool at
once (rounded down, but one in a pool of two or more: otherwise a two-deployment pool could
never eject its sick half; a pool of one is never ejected, its breaker is enough). An ejection
lasts ``base_ejection_seconds`` times the number of times the deployment has been ejected
(capped at ``max_ejection_seconds``); every clean window after it takes one off that number.

The breaker reacts at once to failures in a row; outlier detection catches the deployment that
fails one request in three, which never trips a breaker, and it cannot empty a pool. It judges
only deployments whose circuit is closed (failures in a row count for it where the breaker is
off or has a higher threshold); a deployment its probes bring back up is un-ejected.
``decide`` is pure; ``sweep`` applies it to the pool's ``DeploymentHealth``s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

from swarmgate.config import OutlierDetection
from swarmgate.routing.breaker import CircuitState
from swarmgate.routing.health import DeploymentHealth


class Window(NamedTuple):
    ok: int
    failed: int
    consecutive: int
    ejected: bool


def max_ejected(size: int, percent: float) -> int:
    if size < 2 or percent <= 0:
        return 0
    return max(1, math.floor(size * percent / 100))


def _badness(w: Window, config: OutlierDetection) -> float:
    """How much of an outlier ``w`` is (0: not one); failures in a row rank first."""
    if w.consecutive >= config.consecutive_failures:
        return 2.0 + w.consecutive / 1e6
    total = w.ok + w.failed
    if total >= config.min_requests:
        rate = w.failed / total
        if rate >= config.failure_rate:
            return rate
    return 0.0


def decide(windows: Sequence[Window], config: OutlierDetection) -> list[int]:
    """The indexes of the deployments to eject now, worst first, within the cap."""
    room = max_ejected(len(windows), config.max_ejection_percent)
    room -= sum(1 for w in windows if w.ejected)
    if room <= 0:
        return []
    scored = [(_badness(w, config), i) for i, w in enumerate(windows) if not w.ejected]
    worst = sorted((s for s in scored if s[0] > 0), reverse=True)
    return [i for _, i in worst[:room]]


def ejection_seconds(times: int, config: OutlierDetection) -> float:
    """How long the ``times``-th ejection (1, 2, ...) lasts."""
    return min(config.base_ejection_seconds * times, config.max_ejection_seconds)


def sweep(members: Sequence[DeploymentHealth], config: OutlierDetection, now: float) -> int:
    """One sweep of a pool: eject its outliers, start a new window. Returns how many were
    ejected."""
    # A deployment whose circuit is not closed is the breaker's: its trials will tell, and a
    # repaired one must not sit out an ejection on top.
    windows = [
        Window(h.ok, h.failed, h.consecutive, h.ejected(now))
        if h.breaker.state is CircuitState.CLOSED
        else Window(h.ok, 0, 0, h.ejected(now))
        for h in members
    ]
    chosen = decide(windows, config) if config.enabled else []
    for i in chosen:
        h = members[i]
        h.eject(now, ejection_seconds(h.ejections + 1, config))
    for i, h in enumerate(members):
        w = windows[i]
        if not w.ejected and i not in chosen and not w.failed and h.ejections:
            h.ejections -= 1
        h.ok = h.failed = 0
    return len(chosen)
