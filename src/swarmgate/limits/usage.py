"""The usage report: what ``GET /v1/usage``, ``GET /admin/usage`` and ``swarmgate usage`` show.

A report aggregates the ledger over a time range (``start`` inclusive, ``end`` exclusive)
per any of key, owner and model, and per UTC day or hour (or over the whole range). Times are
epoch seconds, ISO 8601 dates or datetimes (UTC unless they say otherwise), or durations back
from now (``7d``, ``12h``). ``UsageQuery.parse`` turns the raw parameters into a checked query
or raises ``BadRequest`` naming the parameter; ``run`` reads it (``store.usage.UsageStore``);
``to_csv`` renders it for spreadsheets.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from swarmgate.config import parse_duration
from swarmgate.errors import BadRequest
from swarmgate.store.usage import BUCKETS, GROUPS, Bucket, UsageFilter, UsageStore

DEFAULT_RANGE: Final = 30 * 86400.0  # a report without ``start`` covers the 30 days to ``end``
DEFAULT_GROUPS: Final = ("key", "model")
VALUES: Final = (
    "requests",
    "errors",
    "cut",
    "tokens_in",
    "tokens_out",
    "total_tokens",
    "cost",
    "latency_avg",
)


def parse_time(text: str, now: float, param: str) -> float:
    """Epoch seconds, an ISO 8601 date or datetime (UTC if naive), or a duration before now."""
    value = text.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds) or not 0 <= seconds < 1e11:
            raise BadRequest(f"{param}: {text!r} is not a time", param=param)
        return seconds
    try:
        return now - parse_duration(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest(
            f"{param}: {text!r} is not a time (epoch seconds, 2026-12-01, "
            "2026-12-01T10:00:00Z, or a duration back from now such as 7d)",
            param=param,
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class UsageQuery:
    filter: UsageFilter
    group_by: tuple[str, ...]
    bucket: Bucket | None

    @classmethod
    def parse(
        cls,
        now: float,
        *,
        start: str | None = None,
        end: str | None = None,
        group_by: str | None = None,
        bucket: str | None = None,
        key: str | None = None,
        owner: str | None = None,
        model: str | None = None,
    ) -> UsageQuery:
        until = parse_time(end, now, "end") if end else now
        since = parse_time(start, now, "start") if start else until - DEFAULT_RANGE
        if since >= until:
            raise BadRequest("start: must be before end", param="start")
        groups: tuple[str, ...] = DEFAULT_GROUPS
        if group_by is not None:
            groups = tuple(dict.fromkeys(g.strip() for g in group_by.split(",") if g.strip()))
            unknown = [g for g in groups if g not in GROUPS]
            if unknown:
                raise BadRequest(
                    f"group_by: {unknown[0]!r} is not one of key, owner, model", param="group_by"
                )
        chosen: Bucket | None = "day"
        if bucket is not None:
            if bucket == "none":
                chosen = None
            elif bucket in BUCKETS:
                chosen = "day" if bucket == "day" else "hour"
            else:
                raise BadRequest("bucket: must be day, hour or none", param="bucket")
        return cls(UsageFilter(since, until, key, owner, model), groups, chosen)

    def columns(self) -> list[str]:
        keys = ["bucket", "date"] if self.bucket is not None else []
        return [*keys, *self.group_by, *VALUES]


async def run(store: UsageStore, query: UsageQuery) -> dict[str, Any]:
    """The report: one row per group and bucket, and the totals of the range."""
    rows = await store.report(query.filter, query.group_by, query.bucket)
    totals: dict[str, float] = dict.fromkeys(VALUES, 0)
    weighted_latency = 0.0
    for row in rows:
        row["total_tokens"] = row["tokens_in"] + row["tokens_out"]
        if "bucket" in row:
            row["date"] = _iso(row["bucket"])
        for name in VALUES[:-1]:
            totals[name] += row[name]
        weighted_latency += row["latency_avg"] * row["requests"]
    totals["latency_avg"] = weighted_latency / totals["requests"] if totals["requests"] else 0.0
    f = query.filter
    return {
        "object": "usage.report",
        "start": f.since,
        "end": f.until,
        "bucket": query.bucket or "none",
        "group_by": list(query.group_by),
        "filters": {"key": f.key_id, "owner": f.owner, "model": f.model},
        "data": [{name: row.get(name) for name in query.columns()} for row in rows],
        "totals": totals,
    }


def to_csv(report: dict[str, Any], query: UsageQuery) -> str:
    """The report's rows as CSV, with a header line (no totals row: a sum is one formula)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    columns = query.columns()
    writer.writerow(columns)
    for row in report["data"]:
        writer.writerow(["" if row[name] is None else row[name] for name in columns])
    return out.getvalue()
