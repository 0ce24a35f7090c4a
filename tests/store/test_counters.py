"""The counter stores: all of a request's limits taken together or none; settle."""

from __future__ import annotations

from swarmgate.store.counters import MemoryCounters
from swarmgate.types import Check, CheckKind

RPM = Check(CheckKind.REQUESTS, "k:rpm", 3, 60.0, 1, "rpm", "key")
TPM = Check(CheckKind.TOKENS, "k:tpm", 100, 60.0, 1, "tpm", "key")
CONC = Check(CheckKind.CONCURRENT, "k:c", 1, 600.0, 1, "concurrent", "key")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_all_or_none_a_refusal_charges_nothing() -> None:
    counters = MemoryCounters(Clock())
    first = counters.take_now((RPM, CONC), 0, "l1")
    assert first.refused == -1
    refused = counters.take_now((RPM, CONC), 0, "l2")
    assert refused.refused == 1  # the concurrency slot is taken
    # The request window was not charged by the refused request: two more fit after release.
    counters.settle((RPM, CONC), first, "l1", 0, 0)
    assert counters.take_now((RPM,), 0, "l3").refused == -1
    assert counters.take_now((RPM,), 0, "l4").refused == -1
    assert counters.take_now((RPM,), 0, "l5").refused == 0


def test_tokens_are_reserved_then_settled_to_the_usage() -> None:
    clock = Clock()
    counters = MemoryCounters(clock)
    verdict = counters.take_now((TPM,), 80, "l1")
    assert verdict.remaining == (20,)
    assert counters.take_now((TPM,), 30, "l2").refused == 0
    counters.settle((TPM,), verdict, "l1", 80, 10)
    assert counters.take_now((TPM,), 90, "l3").refused == -1


def test_overshoot_is_debt_paid_by_the_next_requests() -> None:
    clock = Clock()
    counters = MemoryCounters(clock)
    verdict = counters.take_now((TPM,), 10, "l1")
    counters.settle((TPM,), verdict, "l1", 10, 150)  # used 140 more than reserved
    refused = counters.take_now((TPM,), 1, "l2")
    assert refused.refused == 0 and refused.wait == 60.0
    clock.now += 60
    assert counters.take_now((TPM,), 1, "l3").refused == -1


def test_a_scaled_store_grants_its_share() -> None:
    counters = MemoryCounters(Clock(), scale=1 / 3)
    check = RPM._replace(limit=9)
    taken = [counters.take_now((check,), 0, f"l{i}").refused for i in range(5)]
    assert taken == [-1, -1, -1, 0, 0]
