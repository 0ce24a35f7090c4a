"""The streaming benchmark: what swarmgate adds to a token stream, and what 1,000 open streams cost.

Against ``swarmgate sim`` (bench/sim_stream.yaml: 20 ms to first token, 20 tokens/s), direct and
through the gateway (auth on, bench/gateway_stream.yaml):

1. time to first token: many sequential one-token streams, alternating direct and gateway so
   that machine noise falls on both alike; p50/p90/p99 and the p50 overhead;
2. per-chunk latency: rounds of 10 concurrent 40-token streams; their TTFT, the gaps between
   chunks, and the latency added to each later chunk (chunk k's arrival after chunk 0, gateway
   minus direct, median over k);
3. memory: the gateway's RSS (its whole process tree) idle, then with 1,000 streams open at once.

Run: ``.venv/bin/python bench/stream_bench.py [--quick]`` (bench/run.sh runs it too).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import aiohttp
import orjson
from processes import REPO, Running, Service, raise_open_files_limit, running
from rows import VENV, Keys

SIM_PORT, GATEWAY_PORT = 18100, 18001
SIM_PROFILE = REPO / "bench" / "sim_stream.yaml"
GATEWAY_CONFIG = REPO / "bench" / "gateway_stream.yaml"
RESULTS = REPO / "bench" / "results"


@dataclass
class Stream:
    """Arrival times (seconds since the request was sent) of each content chunk."""

    arrivals: list[float] = field(default_factory=list)
    status: int = 0

    @property
    def ttft(self) -> float:
        return self.arrivals[0]


JSON = {"Content-Type": "application/json"}


def chat(max_tokens: int) -> bytes:
    messages = [{"role": "user", "content": "Tell me a long story about a swarm of models."}]
    body = {"model": "stream-model", "messages": messages, "stream": True}
    return orjson.dumps({**body, "max_tokens": max_tokens})


def has_content(line: bytes) -> bool:
    if not line.startswith(b"data: {"):
        return False
    choices = orjson.loads(line[6:]).get("choices") or [{}]
    return bool(choices[0].get("delta", {}).get("content"))


async def timed_stream(
    session: aiohttp.ClientSession, url: str, headers: Mapping[str, str], max_tokens: int
) -> Stream:
    stream = Stream()
    start = time.perf_counter()
    async with session.post(url, data=chat(max_tokens), headers={**JSON, **headers}) as response:
        stream.status = response.status
        async for line in response.content:
            if has_content(line):
                stream.arrivals.append(time.perf_counter() - start)
    if stream.status != 200 or not stream.arrivals:
        raise RuntimeError(f"{url}: status {stream.status}, {len(stream.arrivals)} content chunks")
    return stream


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


@dataclass(frozen=True)
class Target:
    name: str
    url: str
    headers: Mapping[str, str]


@dataclass(frozen=True)
class Comparison:
    """One metric, in ms, direct and through the gateway."""

    metric: str
    direct_ms: float
    gateway_ms: float

    @property
    def added_ms(self) -> float:
        return self.gateway_ms - self.direct_ms


def compare(metric: str, direct: Sequence[float], gateway: Sequence[float]) -> list[Comparison]:
    return [
        Comparison(f"{metric} p{q}", pct(direct, q) * 1e3, pct(gateway, q) * 1e3)
        for q in (50, 90, 99)
    ]


async def ttft(
    session: aiohttp.ClientSession, direct: Target, gateway: Target, n: int
) -> list[Comparison]:
    """Sequential one-token streams, alternating paths so that noise falls on both alike."""
    times: dict[str, list[float]] = {direct.name: [], gateway.name: []}
    for _ in range(n):
        for t in (direct, gateway):
            times[t.name].append((await timed_stream(session, t.url, t.headers, 1)).ttft)
    return compare(f"TTFT, {n} sequential", times[direct.name], times[gateway.name])


async def chunks(
    session: aiohttp.ClientSession, direct: Target, gateway: Target, rounds: int, concurrency: int
) -> list[Comparison]:
    """Concurrent 40-token streams: chunk gaps, and how late chunk k is after the first one."""
    streams: dict[str, list[Stream]] = {direct.name: [], gateway.name: []}
    for round_ in range(rounds + 1):
        for t in (direct, gateway):
            tokens = 40 if round_ else 2  # round 0 only opens `concurrency` pooled connections
            batch = [timed_stream(session, t.url, t.headers, tokens) for _ in range(concurrency)]
            done = await asyncio.gather(*batch)
            if round_:
                streams[t.name] += done

    def gaps(done: list[Stream]) -> list[float]:
        return [b - a for s in done for a, b in zip(s.arrivals, s.arrivals[1:], strict=False)]

    def since_first(done: list[Stream]) -> list[float]:
        """Per chunk index k >= 1: the median over streams of (arrival k - arrival 0)."""
        length = min(len(s.arrivals) for s in done)
        return [statistics.median(s.arrivals[k] - s.ttft for s in done) for k in range(1, length)]

    d, g = streams[direct.name], streams[gateway.name]
    label = f"{len(d)} streams, {concurrency} at a time"
    late_d, late_g = since_first(d), since_first(g)
    added = statistics.median(b - a for a, b in zip(late_d, late_g, strict=False))
    return [
        *compare(f"TTFT, {label}", [s.ttft for s in d], [s.ttft for s in g]),
        *compare(f"chunk inter-arrival, {label}", gaps(d), gaps(g)),
        Comparison(
            "chunk k since chunk 0, median over k (added: per-chunk latency)",
            statistics.median(late_d) * 1e3,
            statistics.median(late_d) * 1e3 + added * 1e3,
        ),
    ]


@dataclass(frozen=True)
class OpenStreams:
    streams: int
    tokens_per_stream: int
    failed: int
    peak_open: int  # how many had their first byte and had not ended, at the busiest sample
    idle_rss_mb: float
    peak_rss_mb: float  # the gateway's RSS at the busiest sample
    ttft_p50_ms: float
    ttft_p99_ms: float
    stream_seconds_p50: float

    @property
    def kb_per_stream(self) -> float:
        return (self.peak_rss_mb - self.idle_rss_mb) * 1024 / max(1, self.peak_open)


async def open_streams(target: Target, gateway: Running, n: int, tokens: int) -> OpenStreams:
    """Open ``n`` streams at once; sample the gateway's RSS while they are all open."""
    idle = gateway.rss_bytes()
    opened = ended = failed = 0
    firsts: list[float] = []
    durations: list[float] = []

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal opened, ended, failed
        start = time.perf_counter()
        first = False
        try:
            headers = {**JSON, **target.headers}
            async with session.post(target.url, data=chat(tokens), headers=headers) as r:
                if r.status != 200:
                    raise RuntimeError(f"status {r.status}")
                async for _ in r.content.iter_any():  # no parsing: keep the client cheap
                    if not first:
                        first, opened = True, opened + 1
                        firsts.append(time.perf_counter() - start)
            durations.append(time.perf_counter() - start)
        except (aiohttp.ClientError, RuntimeError):
            failed += 1
        finally:
            ended += 1 if first else 0

    samples: list[tuple[int, int]] = []
    # No connection limit: every stream needs its own connection, all at the same time.
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = [asyncio.create_task(one(session)) for _ in range(n)]
        while not all(t.done() for t in tasks):
            samples.append((opened - ended, gateway.rss_bytes()))
            await asyncio.sleep(0.25)
        await asyncio.gather(*tasks)
    peak = max((open_ for open_, _ in samples), default=0)
    peak_rss = max((rss for open_, rss in samples if open_ == peak), default=idle)
    return OpenStreams(
        streams=n,
        tokens_per_stream=tokens,
        failed=failed,
        peak_open=peak,
        idle_rss_mb=idle / 2**20,
        peak_rss_mb=peak_rss / 2**20,
        ttft_p50_ms=pct(firsts, 50) * 1e3 if firsts else float("nan"),
        ttft_p99_ms=pct(firsts, 99) * 1e3 if firsts else float("nan"),
        stream_seconds_p50=statistics.median(durations) if durations else float("nan"),
    )


def services(keys: Keys, server: str, workers: int) -> tuple[Service, Service]:
    argv = [str(VENV / "swarmgate"), "sim", "--config", str(SIM_PROFILE)]
    sim = Service("sim-stream", argv, SIM_PORT)
    argv = [str(VENV / "swarmgate"), "serve", "--config", str(GATEWAY_CONFIG)]
    argv += ["--port", str(GATEWAY_PORT), "--workers", str(workers), "--server", server]
    env = {"SWARMGATE_ADMIN_KEY": keys.gateway_admin}
    return sim, Service("swarmgate-stream", argv, GATEWAY_PORT, env=env, start_timeout=90.0)


async def measure(
    args: argparse.Namespace, sim: Running, gateway: Running, key: str
) -> tuple[list[Comparison], OpenStreams]:
    path = "/v1/chat/completions"
    direct = Target("direct", sim.url + path, {})
    through = Target("gateway", gateway.url + path, {"Authorization": f"Bearer {key}"})
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await ttft(session, direct, through, 5)  # warm-up: connections, first-request imports
        comparisons = await ttft(session, direct, through, args.ttft_requests)
        comparisons += await chunks(session, direct, through, args.chunk_rounds, 10)
    memory = await open_streams(through, gateway, args.streams, args.stream_tokens)
    return comparisons, memory


def markdown(
    comparisons: Sequence[Comparison], memory: OpenStreams, header: Mapping[str, str]
) -> str:
    lines = [f"# swarmgate streaming benchmark, {header['started']}", ""]
    lines += [f"- {k}: {v}" for k, v in header.items() if k != "started"]
    lines += [
        "",
        "| metric | direct ms | through swarmgate ms | added ms |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {c.metric} | {c.direct_ms:.2f} | {c.gateway_ms:.2f} | {c.added_ms:+.2f} |"
        for c in comparisons
    ]
    m = memory
    lines += [
        "",
        "| streams at once | peak open | failed | gateway RSS idle MB | RSS with streams open MB "
        "| KB per open stream | TTFT p50 / p99 ms | stream duration p50 s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {m.streams} | {m.peak_open} | {m.failed} | {m.idle_rss_mb:.0f} | {m.peak_rss_mb:.0f} "
        f"| {m.kb_per_stream:.1f} | {m.ttft_p50_ms:.0f} / {m.ttft_p99_ms:.0f} "
        f"| {m.stream_seconds_p50:.1f} |",
    ]
    return "\n".join(lines) + "\n"


def _terminate(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds through every `running` block


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ttft-requests", type=int, default=300, help="sequential, each path")
    parser.add_argument("--chunk-rounds", type=int, default=3, help="rounds of 10 streams")
    parser.add_argument("--streams", type=int, default=1000, help="open at once")
    parser.add_argument("--stream-tokens", type=int, default=200, help="tokens per open stream")
    parser.add_argument("--server", choices=["uvicorn", "granian"], default="uvicorn")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer, shorter streams")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    if args.quick:
        args.ttft_requests, args.chunk_rounds, args.streams, args.stream_tokens = 30, 1, 200, 60
    limit = raise_open_files_limit()
    if limit < 3 * args.streams + 100:
        print(f"open files limit {limit} is too low for {args.streams} streams", file=sys.stderr)
        return 2
    keys = Keys.fresh()
    for stale in (REPO / "bench" / ".work").glob("stream.db*"):
        stale.unlink()
    started, load = datetime.now(UTC), os.getloadavg()
    sim_service, gateway_service = services(keys, args.server, args.workers)
    with running(sim_service) as sim, running(gateway_service) as gateway:
        comparisons, memory = asyncio.run(measure(args, sim, gateway, keys.gateway_admin))
    header = {
        "started": started.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "gateway": f"swarmgate {args.server} {args.workers}w, auth on",
        "upstream": "swarmgate sim, bench/sim_stream.yaml (TTFT 20 ms, 20 tokens/s)",
        "load average at start": " ".join(f"{x:.2f}" for x in load),
    }
    text = markdown(comparisons, memory, header)
    result = {
        "header": header,
        "comparisons": [{**asdict(c), "added_ms": c.added_ms} for c in comparisons],
        "open_streams": {**asdict(memory), "kb_per_stream": memory.kb_per_stream},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{started.strftime('%Y%m%dT%H%M%SZ')}-stream.md"
    path.write_text(text)
    path.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    print(text)
    print(f"written: {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
