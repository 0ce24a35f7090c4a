"""A deployment's circuit breaker: a pure state machine over (state, clock).

Closed: requests flow; ``threshold`` consecutive failed attempts open it. Open: nothing is sent
for ``open_seconds``. Half-open: up to ``trials`` requests at once go through as trials; the
first success closes the circuit, a failure opens it again for another ``open_seconds``. An
active probe that succeeds while the circuit is open moves it to half-open at once (the probe is
evidence that the deployment is back; the trial traffic still has to confirm it).

Every method takes ``now`` (seconds on a monotonic clock) and does no I/O, so the machine is
tested without an event loop or a real clock. A success or failure reported while half-open
counts whether or not it came from a trial: an attempt sent before the circuit opened and
finished after it half-opened is as good a witness as a trial.
"""

from __future__ import annotations

import enum


class CircuitState(enum.IntEnum):
    """The value of the ``circuit_breaker_state`` gauge (seed 003)."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class Breaker:
    __slots__ = (
        "failures",
        "open_seconds",
        "opened_at",
        "opens",
        "state",
        "threshold",
        "trials",
        "trials_out",
    )

    def __init__(self, threshold: int = 5, open_seconds: float = 60.0, trials: int = 1) -> None:
        self.threshold = threshold
        self.open_seconds = open_seconds
        self.trials = trials
        self.state = CircuitState.CLOSED
        self.failures = 0  # consecutive, while closed
        self.opened_at = 0.0
        self.trials_out = 0  # trial requests in flight, while half-open
        self.opens = 0  # times it opened (for metrics)

    def allows(self, now: float) -> bool:
        """Whether a request may be sent now; an open circuit whose time is up half-opens."""
        state = self.state
        if state is CircuitState.CLOSED:
            return True
        if state is CircuitState.OPEN:
            if now < self.opened_at + self.open_seconds:
                return False
            self.state = CircuitState.HALF_OPEN
            self.trials_out = 0
        return self.trials_out < self.trials

    def admit(self) -> None:
        """A request was sent (after ``allows``): half-open, it takes a trial slot."""
        if self.state is CircuitState.HALF_OPEN:
            self.trials_out += 1

    def success(self) -> None:
        if self.state is not CircuitState.OPEN:
            self.state = CircuitState.CLOSED
            self.failures = 0
            self.trials_out = 0

    def failure(self, now: float) -> None:
        state = self.state
        if state is CircuitState.CLOSED:
            self.failures += 1
            if self.failures >= self.threshold:
                self._open(now)
        elif state is CircuitState.HALF_OPEN:
            self._open(now)
        # Open already: a late failure of a request sent before it opened changes nothing.

    def release(self) -> None:
        """A trial ended with no verdict (the client left): its slot is free again."""
        if self.state is CircuitState.HALF_OPEN and self.trials_out:
            self.trials_out -= 1

    def probe_ok(self) -> None:
        """An active probe succeeded: an open circuit half-opens without waiting out its time."""
        if self.state is CircuitState.OPEN:
            self.state = CircuitState.HALF_OPEN
            self.trials_out = 0

    def reset(self) -> None:
        """Closed, with nothing counted (the breaker was turned off)."""
        self.state = CircuitState.CLOSED
        self.failures = 0
        self.trials_out = 0

    def _open(self, now: float) -> None:
        self.state = CircuitState.OPEN
        self.opened_at = now
        self.failures = 0
        self.trials_out = 0
        self.opens += 1
