"""The throughput benchmark: swarmgate against direct, nginx, the Python floor and LiteLLM.

One run starts the static nginx upstream once, then for each row starts the server under test,
checks that it answers correctly (and refuses a request without a key when auth is on), drives
it with wrk at each concurrency after a warm-up, samples the RSS of its process tree, and stops
it. Rounds repeat the whole sequence (rows interleaved, so that drifting noise on a shared
machine spreads over all rows) and the table shows medians. Run it through ``bench/run.sh``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import report
import rows as bench_rows
import wrk
from processes import REPO, WORK, BenchError, Running, raise_open_files_limit, running
from rows import Keys, Row

RESULTS = REPO / "bench" / "results"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per cell")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per cell")
    parser.add_argument("--concurrency", default="1,50,200", help="comma-separated connections")
    parser.add_argument("--repeat", type=int, default=1, help="rounds; the table shows medians")
    parser.add_argument("--rows", default="", help="comma-separated row keys (default: all)")
    parser.add_argument("--timeout", type=float, default=10.0, help="wrk request timeout, s")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 s cells, 1 s warm-up")
    parser.add_argument("--list", action="store_true", help="list the row keys and exit")
    parser.add_argument(
        "--baseline",
        default="",
        help="a git commit: adds row sg-uvicorn-1w@baseline, swarmgate at that commit "
        "(uvicorn 1w, auth on), to compare a change with the commit before it in one run",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.repeat = 2.0, 1.0, 1
    return args


def post(url: str, headers: dict[str, str]) -> tuple[int, bytes]:
    body = json.dumps(wrk.CHAT_BODY).encode()
    request = urllib.request.Request(
        url + "/v1/chat/completions",
        data=body,
        headers={"Content-Type": "application/json", **headers},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def smoke(url: str, row: Row) -> None:
    """The row must really serve the chat completion, and really check keys when it says so."""
    status, body = post(url, dict(row.headers))
    if status != 200 or not json.loads(body).get("choices"):
        raise BenchError(f"{row.key}: chat completion answered {status}: {body[:300]!r}")
    if row.auth:
        status, body = post(url, {})
        if status not in row.refusals:
            raise BenchError(f"{row.key}: no key should be refused, got {status}: {body[:200]!r}")


@contextlib.contextmanager
def target(row: Row, upstream: Running) -> Iterator[Running]:
    if row.service is None:
        yield upstream
        return
    with running(row.service) as handle:
        yield handle


def bench_row(
    row: Row,
    upstream: Running,
    args: argparse.Namespace,
    tool: str,
    levels: Sequence[int],
    cells: list[wrk.Cell],
    notes: list[str],
) -> None:
    """Measure ``row`` at each concurrency, appending to ``cells`` (kept if a later one fails)."""
    script = wrk.write_script(WORK / f"{row.key}.lua", row.headers)
    with target(row, upstream) as server:
        smoke(server.url, row)
        url = server.url + "/v1/chat/completions"
        for concurrency in levels:
            try:
                if args.warmup > 0:
                    wrk.run(tool, url, script, concurrency, args.warmup, args.timeout)
                cell = wrk.run(tool, url, script, concurrency, args.duration, args.timeout)
            except RuntimeError as exc:
                for handle in (server, upstream):
                    status = handle.process.poll()
                    if status is not None:  # say who died, and how (< 0: killed by a signal)
                        why = f"{handle.service.name} exited with {status} at c={concurrency}"
                        raise BenchError(f"{why}:\n{handle.log_tail()}") from exc
                raise
            rss = server.rss_bytes() / 2**20
            cell = dataclasses.replace(cell, rss_mb=rss)
            cells.append(cell)
            print(
                f"  c={concurrency:<4} {cell.rps:>9,.0f} rps  p50 {cell.p50_ms:7.2f} ms  "
                f"p99 {cell.p99_ms:7.2f} ms  rss {rss:6.0f} MB  errors {cell.errors}",
                flush=True,
            )
        if upstream.process.poll() is not None:
            raise BenchError("the upstream nginx died during the row")
        if row.redis:
            trips = redis_round_trips(server.url)
            if trips is not None:
                print(f"  redis round trips per admitted request: {trips:.3f}", flush=True)
                notes.append(f"{trips:.3f}")


def redis_round_trips(url: str) -> float | None:
    """The limiter's round trips to Redis that carried admissions, per admitted request,
    over the row's whole run (warm-ups included), from the gateway's own metrics."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as reply:
        text = reply.read().decode()
    trips = admitted = 0.0
    for line in text.splitlines():
        if line.startswith('gateway_limiter_redis_seconds_count{op="admit"}'):
            trips = float(line.rsplit(" ", 1)[1])
        elif line.startswith("gateway_admissions_total{") and 'decision="admitted"' in line:
            admitted += float(line.rsplit(" ", 1)[1])
    return trips / admitted if admitted else None


def _version(argv: Sequence[str]) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        return (done.stdout + done.stderr).strip().splitlines()[0]
    return "unknown"


def header(args: argparse.Namespace, started: datetime) -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    packages = []
    for name in ("uvicorn", "granian", "aiohttp", "uvloop"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            packages.append(f"{name} {metadata.version(name)}")
    litellm = sorted((bench_rows.LITELLM_VENV / "lib").glob("python*/site-packages/litellm-*"))
    litellm_version = litellm[-1].name.split("-")[1].removesuffix(".dist") if litellm else "absent"
    nginx = _version(["nginx", "-v"]).removeprefix("nginx version: ")
    wrk_version = "wrk " + _version(["wrk", "-v"]).split()[1].split("/")[-1]
    revision = _version(["git", "-C", str(REPO), "describe", "--always", "--dirty"])
    return {
        "started": started.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "machine": f"{os.cpu_count()} CPUs ({cpu}), load average at start "
        + " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "software": f"Python {platform.python_version()}, {nginx}, {wrk_version}, "
        f"{', '.join(packages)}, LiteLLM {litellm_version}",
        "swarmgate": f"git {revision}",
        "method": f"wrk --latency, {args.duration:g} s per cell after {args.warmup:g} s warm-up, "
        f"{args.repeat} round(s), medians; one thread at c=1, two otherwise; "
        "RSS = sum of VmRSS over the server's process tree at the end of the cell",
    }


def _terminate(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds through every `running` block


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    keys = Keys.fresh()
    all_rows = bench_rows.all_rows(keys)
    if args.baseline:
        all_rows.insert(4, bench_rows.baseline_row(keys, args.baseline))
    if args.list:
        print("\n".join(f"{r.key:24s} {r.label}" for r in all_rows))
        return 0
    wanted = {k for k in args.rows.split(",") if k}
    selected = [r for r in all_rows if not wanted or r.key in wanted]
    levels = [int(c) for c in args.concurrency.split(",")]
    raise_open_files_limit()
    tool = wrk.ensure_wrk()
    for name in list(os.environ):
        # Only the settings each row sets, nothing inherited; and LiteLLM runs without a database.
        if name.startswith("SWARMGATE_") or name == "DATABASE_URL":
            del os.environ[name]
    for stale in WORK.glob("bench*.db*"):
        stale.unlink()  # a fresh store per run: the admin key is new every run
    started = datetime.now(UTC)
    results = {r.key: report.RowResult(r.key, r.label) for r in selected}
    with contextlib.ExitStack() as services:
        upstream = services.enter_context(running(bench_rows.upstream_service()))
        if any(r.redis for r in selected):
            services.enter_context(running(bench_rows.redis_service()))
        for round_ in range(args.repeat):
            for row in selected:
                print(f"[round {round_ + 1}/{args.repeat}] {row.label}", flush=True)
                if row.key == "litellm" and not bench_rows.LITELLM_VENV.exists():
                    results[row.key].failures.append("bench/.venv-litellm missing (run.sh)")
                    continue
                begun, cells, notes = time.monotonic(), list[wrk.Cell](), list[str]()
                try:
                    bench_row(row, upstream, args, tool, levels, cells, notes)
                except (BenchError, RuntimeError, subprocess.SubprocessError) as exc:
                    print(f"  FAILED: {exc}", flush=True)
                    results[row.key].failures.append(f"round {round_ + 1}: {exc}")
                if cells:
                    results[row.key].rounds.append(cells)
                results[row.key].notes += notes
                print(f"  ({time.monotonic() - begun:.0f} s)", flush=True)
    info = header(args, started)
    text = report.markdown(results, levels, info)
    path = report.write(
        RESULTS, started.strftime("%Y%m%dT%H%M%SZ"), text, report.record(results, levels, info)
    )
    print()
    print(text)
    print(f"written: {path.relative_to(REPO)} and {path.with_suffix('.json').relative_to(REPO)}")
    return 1 if any(r.failures for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
