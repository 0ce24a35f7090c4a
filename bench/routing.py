"""Routing quality: how each balancer does on a skewed simulated fleet under open-loop load.

Four simulated replicas of one model at speeds 1x, 1x, 0.5x and 0.25x, four slots each, each
with a prefix cache that holds a quarter to a third of what a cell's prompts hold (the four
together hold all of it), behind ``swarmgate serve``. The workload: users, each on one of a few
long system prompts, each holding a conversation that grows by a question and an answer per
turn (and starts again after a few turns); requests arrive as a Poisson process at a share of
the fleet's capacity (computed from the simulator's settings, with no prefix-cache hit), and
every request is a streamed chat through the OpenAI SDK. The schedule (arrival times and
prompts) is drawn from ``--seed`` before a cell starts, so every balancer gets the same one.

Per cell (a balancer, a load, one gateway or three sharing a real Redis): p50 and p99 time
to first token (from the request's scheduled time to its first content chunk) and to the
end of the stream, throughput, errors, the prefix-cache hit rate the simulator reports
(``vllm:prefix_cache_hits_total`` over ``vllm:prefix_cache_queries_total``, in tokens), and
each replica's share of the requests. Then issue 14's targets, met or missed. The short,
seeded form runs in CI: ``tests/bench/test_routing.py``.

    .venv/bin/python bench/routing.py [--duration 40] [--loads 0.7,0.9] [--replicas 1,3]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import yaml

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.plugins.processes import (  # noqa: E402
    SWARMGATE,
    Gateway,
    Process,
    Processes,
    free_port,
    spawn,
    wait_healthy,
)
from tests.plugins.servers import RedisServer  # noqa: E402

from swarmgate.sim.kvcache import block_keys  # noqa: E402  (the repository's root is first)
from swarmgate.sim.text import render_chat, tokenize  # noqa: E402

MODEL = "llama"
BALANCERS = ("round_robin", "least_outstanding", "resource_aware", "prefix_aware")
VOCABULARY = (
    "the swarm gateway routes load across replicas keeping queues short caches warm latency "
    "low answer every request with care steady stream tokens model server cluster machine "
    "night help desk manual policy refund order ticket customer account invoice shipping "
    "delivery warranty return exchange product service contract support agent escalate "
    "priority billing payment method address change cancel subscription renewal discount "
    "coupon loyalty points balance statement dispute charge receipt tracking number carrier"
)
WORDS = VOCABULARY.split()


@dataclass(frozen=True)
class Fleet:
    """The simulated replicas: one model profile, run at each of ``speeds``."""

    speeds: tuple[float, ...] = (1.0, 1.0, 0.5, 0.25)
    slots: int = 4
    ttft_ms: float = 20.0
    jitter_ms: float = 10.0
    prefill_tokens_per_second: float = 10_000.0
    tokens_per_second: float = 40.0
    block_tokens: int = 16
    capacity_blocks: int = 1280  # 20,480 tokens per replica
    seed: int = 1

    def names(self) -> list[str]:
        return [f"r{i + 1}" for i in range(len(self.speeds))]

    def profile(self, ports: Sequence[int]) -> dict[str, Any]:
        model = {
            "ttft_ms": self.ttft_ms,
            "jitter_ms": self.jitter_ms,
            "prefill_tokens_per_second": self.prefill_tokens_per_second,
            "tokens_per_second": self.tokens_per_second,
            "slots": self.slots,
            "max_queue": 1024,
            "prefix_cache": {
                "block_tokens": self.block_tokens,
                "capacity_blocks": self.capacity_blocks,
            },
        }
        servers = [
            {
                "name": name,
                "host": "127.0.0.1",
                "port": port,
                "speed": speed,
                "models": {MODEL: model},
            }
            for name, port, speed in zip(self.names(), ports, self.speeds, strict=True)
        ]
        return {"seed": self.seed, "servers": servers}

    def capacity(self, prompt_tokens: float, completion_tokens: float) -> float:
        """Requests per second the fleet completes at most, every prompt uncached: each slot
        serves one request at a time, its prefill then its decode, at its replica's speed."""
        per_request = (
            (self.ttft_ms + self.jitter_ms / 2) / 1000
            + prompt_tokens / self.prefill_tokens_per_second
            + completion_tokens / self.tokens_per_second
        )
        return sum(self.slots * speed / per_request for speed in self.speeds)


@dataclass(frozen=True)
class Workload:
    """Users on a few long system prompts, each with a conversation of a few turns."""

    prompts: int = 32
    system_words: int = 420  # ~800 of the simulator's tokens
    users: int = 96
    turns: int = 6  # a conversation's length; then the user starts a new one
    question_words: int = 30
    answer_words: int = 24
    max_tokens: int = 24
    seed: int = 7


@dataclass(frozen=True)
class Arrival:
    at: float  # seconds after the start
    user: int
    messages: list[dict[str, str]]


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def schedule(workload: Workload, rate: float, seconds: float) -> list[Arrival]:
    """Poisson arrivals at ``rate`` per second for ``seconds``, each a turn of a user drawn
    at random; a user's conversation advances when its turn is sent, so the prompts do not
    depend on how fast anything answers."""
    rng = random.Random(workload.seed)
    systems = [
        f"You are assistant {i} of the help desk. " + _text(rng, workload.system_words)
        for i in range(workload.prompts)
    ]
    histories: list[list[dict[str, str]]] = [[] for _ in range(workload.users)]
    arrivals: list[Arrival] = []
    at = rng.expovariate(rate)
    while at < seconds:
        user = rng.randrange(workload.users)
        history = histories[user]
        if len(history) >= 2 * workload.turns:
            history.clear()
        question = f"User {user} asks: " + _text(rng, workload.question_words)
        system = {"role": "system", "content": systems[user % workload.prompts]}
        messages = [system, *history, {"role": "user", "content": question}]
        arrivals.append(Arrival(at, user, messages))
        history += [
            {"role": "user", "content": question},
            {"role": "assistant", "content": _text(rng, workload.answer_words)},
        ]
        at += rng.expovariate(rate)
    return arrivals


def prompt_tokens(messages: list[dict[str, str]]) -> int:
    """The prompt's length in the simulator's tokens (its chat rendering)."""
    return len(tokenize(render_chat(messages)))


def best_hit_rate(arrivals: Sequence[Arrival], block_tokens: int, after: float) -> float:
    """The hit rate of one unbounded prefix cache serving every request (of those due after
    ``after``): the most any routing can find, since a turn's new tokens are never cached."""
    seen: set[int] = set()
    hits = queries = 0
    for arrival in arrivals:
        keys = block_keys(tokenize(render_chat(arrival.messages)), block_tokens)
        if arrival.at >= after:
            queries += prompt_tokens(arrival.messages)
            for key in keys:
                if key not in seen:
                    break
                hits += block_tokens
        seen.update(keys)
    return hits / queries if queries else 0.0


def mean_prompt_tokens(workload: Workload) -> float:
    sample = schedule(workload, 10.0, 200.0)
    return sum(prompt_tokens(a.messages) for a in sample) / len(sample)


@dataclass
class Result:
    scheduled: float  # loop time the request was due
    ttft: float | None = None
    e2e: float | None = None
    error: str = ""
    deployment: str = ""  # the replica that answered (the gateway's response header)


@dataclass
class Cell:
    balancer: str
    gateways: int
    load: float
    offered: float  # requests per second
    results: list[Result]
    completed: int  # answers (of any request) that ended while the measured arrivals came
    seconds: float  # how long they came for
    hits: float
    queries: float
    served: dict[str, float]
    lag: float  # the most the client fell behind its schedule, seconds
    share: bool = True

    @property
    def label(self) -> str:
        if self.gateways == 1:
            return self.balancer
        how = "Redis" if self.share else "no sharing"
        return f"{self.balancer}, {self.gateways} gateways ({how})"

    @property
    def ok(self) -> list[Result]:
        return [r for r in self.results if not r.error]

    @property
    def errors(self) -> int:
        return len(self.results) - len(self.ok)

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0

    @property
    def throughput(self) -> float:
        """Answers completed per second while the load was on: the offered rate when the
        fleet keeps up, less when requests pile up in queues."""
        return self.completed / self.seconds if self.seconds > 0 else 0.0

    def ttft(self, q: float) -> float:
        return percentile([r.ttft for r in self.ok if r.ttft is not None], q)

    def e2e(self, q: float) -> float:
        return percentile([r.e2e for r in self.ok if r.e2e is not None], q)

    def ttft_on(self, deployment: str, q: float) -> float:
        return percentile(
            [r.ttft for r in self.ok if r.ttft is not None and r.deployment == deployment], q
        )

    def row(self) -> str:
        total = sum(self.served.values()) or 1.0
        shares = " / ".join(f"{100 * n / total:.0f}" for n in self.served.values())
        tails = " / ".join(f"{self.ttft_on(name, 99):.2f}" for name in self.served)
        return (
            f"| {self.label} | {len(self.results)} | {self.errors} | {self.throughput:.1f} "
            f"| {self.ttft(50):.2f} | {self.ttft(99):.2f} | {self.e2e(50):.2f} "
            f"| {self.e2e(99):.2f} | {100 * self.hit_rate:.1f}% | {shares} | {tails} |"
        )


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank percentile (NaN of nothing)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


HEADER = (
    "| balancer | requests | errors | throughput rps | TTFT p50 s | TTFT p99 s "
    "| E2E p50 s | E2E p99 s | prefix-cache hit rate | served by r1 / r2 / r3 / r4, % "
    "| TTFT p99 on r1 / r2 / r3 / r4, s |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"
)


def _counters(url: str) -> tuple[float, float, float]:
    """A simulated server's (prefix-cache hits, queries, requests answered) so far."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    found = dict.fromkeys(
        (
            "vllm:prefix_cache_hits_total",
            "vllm:prefix_cache_queries_total",
            "vllm:request_success_total",
        ),
        0.0,
    )
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in found:
            found[name] += float(line.rsplit(" ", 1)[1])
    hits, queries, served = found.values()
    return hits, queries, served


class Sims:
    """The fleet's replicas, in one ``swarmgate sim`` process, fresh (cold caches) per cell."""

    def __init__(self, fleet: Fleet, root: Path) -> None:
        ports = [free_port() for _ in fleet.speeds]
        self.urls = {n: f"http://127.0.0.1:{p}" for n, p in zip(fleet.names(), ports, strict=True)}
        path = root / "sim.yaml"
        path.write_text(yaml.safe_dump(fleet.profile(ports)))
        log = root / "sim.log"
        proc = spawn([*SWARMGATE, "sim", "--config", str(path)], log)
        self.process = Process(proc, log, next(iter(self.urls.values())))

    def wait_ready(self) -> None:
        for url in self.urls.values():
            wait_healthy(Process(self.process.proc, self.process.log, url))

    def counters(self) -> dict[str, tuple[float, float, float]]:
        return {name: _counters(url) for name, url in self.urls.items()}

    def stop(self) -> None:
        self.process.stop()


def gateway_config(sims: Sims, balancer: str, redis_url: str | None, share: bool) -> dict[str, Any]:
    deployments = [{"url": url, "name": name} for name, url in sims.urls.items()]
    config: dict[str, Any] = {
        "models": {MODEL: {"deployments": deployments, "balancer": balancer}},
        # The same for every balancer; only resource- and prefix-aware read the figures.
        "scrape": {"interval": 1.0},
        "ledger": {"enabled": False},
        "timeouts": {"first_byte": 300.0, "total": 600.0},
    }
    if redis_url is not None:
        config["redis"] = {"url": redis_url, "share_placements": share}
    return config


async def _one(client: openai.AsyncOpenAI, arrival: Arrival, due: float, max_tokens: int) -> Result:
    result = Result(due)
    loop = asyncio.get_running_loop()
    try:
        async with client.chat.completions.with_streaming_response.create(
            model=MODEL,
            messages=arrival.messages,  # type: ignore[arg-type]
            max_tokens=max_tokens,
            stream=True,
        ) as response:
            result.deployment = response.headers.get("x-swarmgate-deployment", "")
            stream = await response.parse()
            assert isinstance(stream, openai.AsyncStream)  # stream=True
            async for chunk in stream:
                if result.ttft is None and chunk.choices and chunk.choices[0].delta.content:
                    result.ttft = loop.time() - due
        result.e2e = loop.time() - due
        if result.ttft is None:
            result.error = "no content"
    except Exception as exc:  # any failure is a result, never a dead load generator
        result.error = f"{type(exc).__name__}: {exc}"[:200]
    return result


async def drive(
    gateways: Sequence[Gateway],
    arrivals: Sequence[Arrival],
    max_tokens: int,
    warmup: float,
    on_warm: Callable[[], None],
) -> tuple[list[Result], int, float]:
    """Send every arrival at its time, the i-th to gateway ``i % len(gateways)`` (as an L4
    load balancer would); returns the measured results (those due after ``warmup``), how
    many answers of any request ended between ``warmup`` and the last arrival, and the
    largest lag behind schedule."""
    clients = [
        openai.AsyncOpenAI(
            base_url=gw.url + "/v1", api_key=gw.admin_key, max_retries=0, timeout=600.0
        )
        for gw in gateways
    ]
    loop = asyncio.get_running_loop()
    start = loop.time()
    tasks: list[tuple[bool, asyncio.Task[Result]]] = []
    lag = 0.0
    warm = warmup <= 0
    if warm:
        on_warm()
    try:
        for i, arrival in enumerate(arrivals):
            due = start + arrival.at
            if not warm and arrival.at >= warmup:
                await asyncio.sleep(due - loop.time())
                on_warm()
                warm = True
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            lag = max(lag, loop.time() - due)
            client = clients[i % len(clients)]
            task = asyncio.create_task(_one(client, arrival, due, max_tokens))
            tasks.append((arrival.at >= warmup, task))
        results = await asyncio.gather(*(t for _, t in tasks))
    finally:
        for client in clients:
            await client.close()
    measured = [r for (counted, _), r in zip(tasks, results, strict=True) if counted]
    window = (start + warmup, start + (arrivals[-1].at if arrivals else warmup))
    completed = sum(
        not r.error and r.e2e is not None and window[0] <= r.scheduled + r.e2e <= window[1]
        for r in results
    )
    return measured, completed, lag


@contextmanager
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Sweep:
    fleet: Fleet = field(default_factory=Fleet)
    workload: Workload = field(default_factory=Workload)
    duration: float = 40.0  # seconds of arrivals, warm-up included
    warmup: float = 5.0

    def offered(self, load: float) -> float:
        w = self.workload
        return load * self.fleet.capacity(mean_prompt_tokens(w), w.max_tokens)

    def cell(
        self,
        balancer: str,
        load: float,
        gateways: int = 1,
        redis: RedisServer | None = None,
        share: bool = True,
    ) -> Cell:
        rate = self.offered(load)
        arrivals = schedule(self.workload, rate, self.duration)
        with tempfile.TemporaryDirectory(prefix="swarmgate-routing-") as tmp:
            root = Path(tmp)
            sims = Sims(self.fleet, root)
            processes = Processes(root / "gateways")
            processes.root.mkdir()
            try:
                url = None
                if gateways > 1:
                    assert redis is not None, "several gateways share a Redis"
                    redis.flush()
                    url = redis.url
                config = gateway_config(sims, balancer, url, share)
                # The gateways start while the simulator does: neither needs the other yet.
                gws = [processes.gateway(config) for _ in range(gateways)]
                sims.wait_ready()
                before: dict[str, tuple[float, float, float]] = {}

                def warm() -> None:
                    before.update(sims.counters())

                results, completed, lag = asyncio.run(
                    drive(gws, arrivals, self.workload.max_tokens, self.warmup, warm)
                )
                after = sims.counters()
            finally:
                processes.stop_all()
                sims.stop()
        delta = {n: tuple(a - b for a, b in zip(after[n], before[n], strict=True)) for n in after}
        return Cell(
            balancer,
            gateways,
            load,
            rate,
            results,
            completed,
            (arrivals[-1].at if arrivals else 0.0) - self.warmup,
            hits=sum(d[0] for d in delta.values()),
            queries=sum(d[1] for d in delta.values()),
            served={n: d[2] for n, d in delta.items()},
            lag=lag,
            share=share,
        )


def targets(cells: Sequence[Cell]) -> list[str]:
    """Issue 14's targets, per load, from the cells that measure them."""
    lines = []
    for load in sorted({c.load for c in cells}):
        one = {c.balancer: c for c in cells if c.load == load and c.gateways == 1}
        three = {c.balancer: c for c in cells if c.load == load and c.gateways > 1 and c.share}
        rr, lo = one.get("round_robin"), one.get("least_outstanding")
        ra, pa = one.get("resource_aware"), one.get("prefix_aware")
        at = f"{100 * load:.0f}%"
        if ra and rr:
            ratio = ra.ttft(99) / rr.ttft(99)
            lines.append(
                f"{at}: resource-aware p99 TTFT / round robin's = {ratio:.2f} (target <= 0.5): "
                + ("met" if ratio <= 0.5 else "MISSED")
            )
        if pa and rr:
            ratio = pa.hit_rate / rr.hit_rate if rr.hit_rate else math.inf
            lines.append(
                f"{at}: prefix-aware hit rate / round robin's = {ratio:.2f} (target >= 2): "
                + ("met" if ratio >= 2 else "MISSED")
            )
        if pa and lo:
            mine, theirs = pa.ttft(99), lo.ttft(99)
            lines.append(
                f"{at}: prefix-aware p99 TTFT {mine:.2f} s vs least-outstanding's {theirs:.2f} s"
                " (target: no worse): " + ("met" if mine <= theirs else "MISSED")
            )
        if pa and "prefix_aware" in three:
            ratio = three["prefix_aware"].hit_rate / pa.hit_rate
            lines.append(
                f"{at}: prefix-aware hit rate, 3 gateways / 1 = {ratio:.3f} (target >= 0.95): "
                + ("met" if ratio >= 0.95 else "MISSED")
            )
    return lines


def report(sweep: Sweep, cells: Sequence[Cell], began: str) -> str:
    f, w = sweep.fleet, sweep.workload
    mean = mean_prompt_tokens(w)
    lines = [
        began,
        "",
        f"Fleet: {len(f.speeds)} replicas of one model at speeds "
        f"{', '.join(f'{s:g}x' for s in f.speeds)}; {f.slots} slots each; {f.ttft_ms:g} ms "
        f"(+ up to {f.jitter_ms:g}) to first token plus the uncached prompt at "
        f"{f.prefill_tokens_per_second:,.0f} tokens/s, {f.tokens_per_second:g} tokens/s decode "
        f"(at 1x); a prefix cache of {f.capacity_blocks * f.block_tokens:,} tokens each.",
        f"Workload: {w.users} users on {w.prompts} system prompts, conversations of up to "
        f"{w.turns} turns, {w.max_tokens} tokens out, {mean:,.0f} prompt tokens on average; "
        f"capacity (no cache hits) {f.capacity(mean, w.max_tokens):.1f} requests/s; "
        f"{sweep.duration:g} s of arrivals per cell, the first {sweep.warmup:g} s not measured; "
        f"seeds: fleet {f.seed}, workload {w.seed}.",
    ]
    for load in sorted({c.load for c in cells}):
        mine = [c for c in cells if c.load == load]
        arrivals = schedule(w, mine[0].offered, sweep.duration)
        best = best_hit_rate(arrivals, f.block_tokens, sweep.warmup)
        lines += [
            "",
            f"**{100 * load:.0f}% of capacity: {mine[0].offered:.1f} requests/s offered** "
            f"(the best hit rate any routing could reach on this schedule: {100 * best:.1f}%)",
            "",
            HEADER,
            *(c.row() for c in mine),
        ]
    lag = max(c.lag for c in cells)
    lines += ["", f"(the load generator fell behind its schedule by {1000 * lag:.0f} ms at most)"]
    lines += ["", *targets(cells)]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=40.0, help="seconds of arrivals")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds not measured")
    parser.add_argument("--loads", default="0.7,0.9", help="shares of the fleet's capacity")
    parser.add_argument("--balancers", default=",".join(BALANCERS))
    parser.add_argument("--replicas", default="1,3", help="gateway counts (more: Redis)")
    parser.add_argument(
        "--no-sharing", action="store_true", help="also 3 gateways with Redis but no hints"
    )
    parser.add_argument("--seed", type=int, default=7, help="the workload's seed")
    parser.add_argument(
        "--cache-blocks", type=int, default=Fleet.capacity_blocks, help="each replica's KV cache"
    )
    args = parser.parse_args()
    sweep = Sweep(
        fleet=Fleet(capacity_blocks=args.cache_blocks),
        workload=Workload(seed=args.seed),
        duration=args.duration,
        warmup=args.warmup,
    )
    loads = [float(x) for x in args.loads.split(",")]
    balancers = args.balancers.split(",")
    replicas = [int(x) for x in args.replicas.split(",")]
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    began = (
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, swarmgate at git {commit}, "
        f"load average {os.getloadavg()[0]:.2f} at the start, {os.cpu_count()} CPUs."
    )
    cells: list[Cell] = []
    with redis_server() as redis:
        for load in loads:
            runs = [(b, n, True) for n in replicas for b in balancers]
            if args.no_sharing:
                runs.append(("prefix_aware", max(replicas), False))
            for balancer, n, share in runs:
                started = time.monotonic()
                cell = sweep.cell(balancer, load, n, redis if n > 1 else None, share)
                cells.append(cell)
                took = time.monotonic() - started
                print(f"{100 * load:.0f}% {cell.label}: {took:.0f} s", file=sys.stderr)
                print(HEADER.splitlines()[0], file=sys.stderr)
                print(cell.row(), file=sys.stderr)
    print(report(sweep, cells, began))
    return 0


if __name__ == "__main__":
    sys.exit(main())
