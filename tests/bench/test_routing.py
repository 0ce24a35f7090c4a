"""The routing-quality benchmark's short, seeded point (``bench/routing.py`` is the sweep):
on the skewed simulated fleet at 70% of its capacity, prefix-aware routing finds the
replicas' prefix caches far more often than round robin and keeps the time to first token
down, where round robin overloads the slowest replica."""

from __future__ import annotations

from bench.routing import Cell, Sweep


def _cells() -> tuple[Cell, Cell]:
    sweep = Sweep(duration=SECONDS, warmup=WARMUP)
    return sweep.cell("round_robin", 0.7), sweep.cell("prefix_aware", 0.7)


SECONDS = 8.0
WARMUP = 1.0


def test_prefix_aware_beats_round_robin_on_a_skewed_fleet() -> None:
    round_robin, prefix = _cells()
    for cell in (round_robin, prefix):
        print(cell.row())  # shown with -s
        assert cell.errors == 0, [r.error for r in cell.results if r.error][:5]
        assert len(cell.results) > 50
    assert prefix.hit_rate > 1.5 * round_robin.hit_rate
    assert prefix.ttft(99) < 0.5 * round_robin.ttft(99)
