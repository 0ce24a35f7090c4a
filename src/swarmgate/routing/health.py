"""A deployment's health: whether it may be picked, from three witnesses.

- its circuit breaker (``routing/breaker.py``), fed every attempt's outcome by the accounting;
- outlier detection (``routing/outliers.py``), which ejects it for a while when its failures
  stand out in live traffic;
- active probes (``routing/probes.py``), which mark it down after ``unhealthy_threshold``
  failed probes in a row and up after ``healthy_threshold`` good ones.

``routable`` is the one attribute the request path tests: true while the circuit is closed,
the deployment not ejected and its probes up. Only when it is false does a pick ask
``admits()``, which reads the clock (an ejection or an open circuit may have run out: a
half-open circuit lets its trials through). The counters here are plain integers, read by the
metrics at a scrape and by the outlier sweep every ``interval``; nothing is allocated per
request.
"""

from __future__ import annotations

import time

from swarmgate.config import CircuitBreaker, HealthCheck
from swarmgate.routing.breaker import Breaker, CircuitState
from swarmgate.types import Clock, Outcome

DEFAULT_BREAKER = CircuitBreaker()
DEFAULT_PROBES = HealthCheck()


class DeploymentHealth:
    __slots__ = (
        "breaker",
        "breaker_on",
        "clock",
        "consecutive",
        "ejected_until",
        "ejections",
        "failed",
        "healthy_threshold",
        "ok",
        "probe_failures",
        "probe_successes",
        "probe_up",
        "probes_failed",
        "probes_ok",
        "routable",
        "times_ejected",
        "unhealthy_threshold",
    )

    def __init__(
        self,
        breaker: CircuitBreaker | None = None,
        probes: HealthCheck | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.clock = clock
        self.breaker = Breaker()
        self.breaker_on = True
        self.healthy_threshold = 2
        self.unhealthy_threshold = 3
        self.routable = True
        self.consecutive = 0  # failed attempts in a row
        # The outlier window's counts since the last sweep.
        self.ok = 0
        self.failed = 0
        self.ejected_until = 0.0  # 0: not ejected
        self.ejections = 0  # the multiplier of the next ejection's time
        self.times_ejected = 0  # for metrics
        self.probe_up = True
        self.probe_successes = 0  # in a row
        self.probe_failures = 0  # in a row
        self.probes_ok = 0  # totals, for metrics
        self.probes_failed = 0
        self.configure(breaker or DEFAULT_BREAKER, probes or DEFAULT_PROBES)

    def configure(self, breaker: CircuitBreaker, probes: HealthCheck) -> None:
        """New settings (a reload) keep the current state."""
        b = self.breaker
        b.threshold, b.open_seconds, b.trials = (
            breaker.threshold,
            breaker.open_seconds,
            breaker.half_open_requests,
        )
        self.breaker_on = breaker.enabled
        if not breaker.enabled:
            b.reset()
        self.healthy_threshold = probes.healthy_threshold
        self.unhealthy_threshold = probes.unhealthy_threshold
        if not probes.enabled:
            self.probe_up = True
        self._update()

    # The request path.

    def admits(self) -> bool:
        """Whether a deployment that is not ``routable`` may take a request now: its ejection
        has run out, or its circuit is (or has just turned) half-open with a trial free."""
        if not self.probe_up:
            return False
        now = self.clock()
        if self.ejected_until:
            if now < self.ejected_until:
                return False
            self.ejected_until = 0.0
            self._update()
            if self.routable:
                return True
        return self.breaker.allows(now)

    def sent(self) -> None:
        """A request goes to a deployment that was not ``routable`` (a half-open trial)."""
        self.breaker.admit()

    def observe(self, outcome: Outcome) -> None:
        """How an attempt here ended (once per attempt, from the accounting)."""
        if outcome is Outcome.OK:  # the hot path first: an add and two attribute tests
            self.ok += 1
            if self.consecutive or not self.routable:
                self.consecutive = 0
                self.breaker.success()
                self._update()
            return
        if outcome.is_failure:
            self.failed += 1
            self.consecutive += 1
            if self.breaker_on:
                self.breaker.failure(self.clock())
                if self.breaker.state is not CircuitState.CLOSED:
                    self.routable = False
        elif outcome is Outcome.CLIENT_GONE:
            self.breaker.release()
        else:
            self.ok += 1
            # Usually neither: two attribute tests.
            if self.consecutive or not self.routable:
                self.consecutive = 0
                self.breaker.success()
                self._update()

    # The background: probes and the outlier sweep.

    def probed(self, ok: bool) -> None:
        if ok:
            self.probes_ok += 1
            self.probe_failures = 0
            self.probe_successes += 1
            if not self.probe_up and self.probe_successes >= self.healthy_threshold:
                self.probe_up = True
                # Back: an open circuit need not wait out its time, nor an ejection; trials
                # and the next sweeps will confirm it.
                self.breaker.probe_ok()
                self.ejected_until = 0.0
                self._update()
        else:
            self.probes_failed += 1
            self.probe_successes = 0
            self.probe_failures += 1
            if self.probe_up and self.probe_failures >= self.unhealthy_threshold:
                self.probe_up = False
                self.routable = False

    def eject(self, now: float, seconds: float) -> None:
        self.ejected_until = now + seconds
        self.ejections += 1
        self.times_ejected += 1
        self.consecutive = 0  # judged afresh when it is back
        self.routable = False

    def ejected(self, now: float) -> bool:
        return bool(self.ejected_until) and now < self.ejected_until

    def circuit(self, now: float) -> CircuitState:
        """The circuit's state as a reader should see it: open whose time is up is half-open."""
        b = self.breaker
        if b.state is CircuitState.OPEN and now >= b.opened_at + b.open_seconds:
            return CircuitState.HALF_OPEN
        return b.state

    @property
    def usable(self) -> bool:
        """Whether it may serve now or as soon as a trial is free: probes up, not ejected, the
        circuit not open (reports; the request path uses ``routable`` and ``admits``)."""
        now = self.clock()
        if not self.probe_up or self.ejected(now):
            return False
        return self.circuit(now) is not CircuitState.OPEN

    def why_down(self) -> str | None:
        """Why it may not be picked now (None: it may), for status documents."""
        now = self.clock()
        if not self.probe_up:
            return "failing its health probes"
        if self.ejected(now):
            return f"ejected by outlier detection for {self.ejected_until - now:.0f} s more"
        if self.circuit(now) is CircuitState.OPEN:
            left = self.breaker.opened_at + self.breaker.open_seconds - now
            return f"circuit open for {left:.0f} s more"
        return None

    def _update(self) -> None:
        self.routable = (
            self.probe_up and not self.ejected_until and self.breaker.state is CircuitState.CLOSED
        )
