"""Turning benchmark cells into the published table (markdown) and the raw record (JSON).

Repeated rounds are reduced to medians field by field, because the machines are shared and one
noisy round should not decide a figure. The two derived columns compare each row with the Python
floor (the minimal proxy under uvicorn, at concurrency 50) and with no proxy at all (the direct
row, at concurrency 1).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from wrk import Cell

FLOOR_ROW, FLOOR_CONCURRENCY = "minimal-uvicorn", 50
DIRECT_ROW, LATENCY_CONCURRENCY = "direct", 1


@dataclass
class RowResult:
    key: str
    label: str
    rounds: list[list[Cell]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # per round: Redis round trips per request

    def median(self, concurrency: int) -> Cell | None:
        cells = [c for r in self.rounds for c in r if c.concurrency == concurrency]
        if not cells:
            return None

        def mid(name: str) -> float:
            return float(statistics.median(getattr(c, name) for c in cells))

        return Cell(
            concurrency=concurrency,
            rps=mid("rps"),
            p50_ms=mid("p50_ms"),
            p90_ms=mid("p90_ms"),
            p99_ms=mid("p99_ms"),
            requests=int(mid("requests")),
            errors=max(c.errors for c in cells),
            rss_mb=mid("rss_mb"),
        )


def derived(results: Mapping[str, RowResult], row: RowResult) -> tuple[float | None, float | None]:
    """(rps at 50 / the minimal uvicorn proxy's rps at 50, p50 at 1 minus direct's p50 at 1)."""
    ratio = added = None
    floor = results.get(FLOOR_ROW)
    floor_cell = floor.median(FLOOR_CONCURRENCY) if floor else None
    mine = row.median(FLOOR_CONCURRENCY)
    if floor_cell and mine and floor_cell.rps > 0:
        ratio = mine.rps / floor_cell.rps
    direct = results.get(DIRECT_ROW)
    direct_cell = direct.median(LATENCY_CONCURRENCY) if direct else None
    mine = row.median(LATENCY_CONCURRENCY)
    if direct_cell and mine and not math.isnan(mine.p50_ms - direct_cell.p50_ms):
        added = mine.p50_ms - direct_cell.p50_ms
    return ratio, added


def _num(value: float | None, digits: int = 2, suffix: str = "") -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:.{digits}f}{suffix}"


def markdown(
    results: Mapping[str, RowResult], concurrencies: Sequence[int], header: Mapping[str, str]
) -> str:
    lines = [f"# swarmgate benchmark, {header['started']}", ""]
    lines += [f"- {k}: {v}" for k, v in header.items() if k != "started"]
    lines += [
        "",
        "| row | conc | rps | p50 ms | p90 ms | p99 ms | RSS MB | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results.values():
        for concurrency in concurrencies:
            cell = row.median(concurrency)
            if cell is None:
                lines.append(f"| {row.label} | {concurrency} | failed | | | | | |")
                continue
            lines.append(
                f"| {row.label} | {concurrency} | {cell.rps:,.0f} | {_num(cell.p50_ms)} | "
                f"{_num(cell.p90_ms)} | {_num(cell.p99_ms)} | {cell.rss_mb:.0f} | {cell.errors} |"
            )
    lines += [
        "",
        f"| row | rps at c={FLOOR_CONCURRENCY} / minimal proxy (uvicorn) "
        f"| added p50 at c={LATENCY_CONCURRENCY} over direct, ms |",
        "|---|---:|---:|",
    ]
    for row in results.values():
        ratio, added = derived(results, row)
        lines.append(f"| {row.label} | {_num(ratio, 2, 'x')} | {_num(added, 3)} |")
    trips = [(row, row.notes) for row in results.values() if row.notes]
    if trips:
        lines += ["", "| row | Redis round trips per admitted request (each round) |", "|---|---|"]
        lines += [f"| {row.label} | {', '.join(notes)} |" for row, notes in trips]
    failures = [(row, f) for row in results.values() for f in row.failures]
    if failures:
        lines += ["", "Failures (the figures above are medians over the cells that completed):"]
        lines.append("")
        for row, text in failures:
            said = text.strip().splitlines() or [""]
            cause = f" … {said[-1].strip()}" if len(said) > 1 else ""  # the exception, if any
            lines.append(f"- {row.label}: {said[0]}{cause}")
    return "\n".join(lines) + "\n"


def record(
    results: Mapping[str, RowResult], concurrencies: Sequence[int], header: Mapping[str, str]
) -> dict[str, object]:
    rows = []
    for row in results.values():
        ratio, added = derived(results, row)
        medians = [row.median(c) for c in concurrencies]
        rows.append(
            {
                "key": row.key,
                "label": row.label,
                "median": [m.as_dict() for m in medians if m is not None],
                "rounds": [[c.as_dict() for c in r] for r in row.rounds],
                "rps_ratio_to_minimal_uvicorn_c50": ratio,
                "added_p50_ms_over_direct_c1": added,
                "failures": row.failures,
                "redis_round_trips_per_admitted_request": row.notes,
            }
        )
    return {"header": dict(header), "concurrencies": list(concurrencies), "rows": rows}


def write(directory: Path, stamp: str, text: str, data: Mapping[str, object]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{stamp}.md"
    path.write_text(text)
    path.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    return path
