"""Prometheus metrics, named as the seeds name them, counted without a lock on the hot path.

Every metric is ``gateway_*`` (seed 001 names ``gateway_requests_total{method,endpoint,status}``,
``gateway_request_duration_seconds``, ``inference_requests_total{model,type}`` and
``gateway_active_users``; the rest follow its prefix). Labels are bounded: routes, models,
deployments, statuses and kinds, never users or keys.

Why hand-written in front of prometheus-client: it takes a lock for every increment and walks a
histogram's buckets in Python, ~5.5 µs for the ten observations one request makes. Here a
request adds to plain dicts keyed by label tuples; ``flush`` moves the sums into
prometheus-client's own collectors, which still do the exposition. ``render`` flushes first, so
a scrape of one process is exact. With several workers (``serve`` sets
``PROMETHEUS_MULTIPROC_DIR``) each worker also flushes every second into its files, and the
worker serving a scrape sums them: the other workers' counts are then at most a second old.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

# What became of the usage ledger's records (store.writebehind's counters).
LEDGER_STATES = ("queued", "written", "spooled", "replayed", "dropped")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)
QUEUE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
FLUSH_SECONDS = 1.0  # with several workers: how stale another worker's counts may be
MAX_ACTIVE_USERS = 100_000  # distinct users remembered at most (a flood of new ones is cut off)

Labels = tuple[str, ...]


class DeploymentHealthRow(NamedTuple):
    """One deployment's health, and the load its own ``/metrics`` reported, as the metrics
    read them at a flush (from the fleet's states)."""

    model: str
    deployment: str
    circuit: int  # 0 closed, 1 open, 2 half-open
    up: bool  # usable: circuit not open, not ejected, probes up
    opens: int  # times its circuit opened (a running total)
    ejections: int  # times outlier detection ejected it (a running total)
    probes_ok: int  # active probes that succeeded (a running total)
    probes_failed: int
    # As last scraped (routing/scrape.py); None: not scraped, or the figures were dropped.
    waiting: float | None = None
    running: float | None = None
    kv_usage: float | None = None  # also None when the server exports no KV gauge


class _Counter:
    __slots__ = ("metric", "pending")

    def __init__(self, metric: Counter) -> None:
        self.metric = metric
        self.pending: dict[Labels, float] = {}

    def inc(self, labels: Labels, amount: float = 1.0) -> None:
        pending = self.pending
        pending[labels] = pending.get(labels, 0.0) + amount

    def flush(self) -> None:
        pending, self.pending = self.pending, {}
        for labels, amount in pending.items():
            self.metric.labels(*labels).inc(amount)


class _Histogram:
    __slots__ = ("bounds", "metric", "pending")

    def __init__(self, metric: Histogram, buckets: tuple[float, ...]) -> None:
        self.metric = metric
        self.bounds = (*buckets, math.inf)
        self.pending: dict[Labels, list[float]] = {}  # bucket counts, then the sum

    def observe(self, labels: Labels, value: float) -> None:
        slot = self.pending.get(labels)
        if slot is None:
            slot = self.pending[labels] = [0.0] * (len(self.bounds) + 1)
        # prometheus-client's rule: a value goes to the first bucket whose bound is >= it.
        slot[bisect_left(self.bounds, value)] += 1
        slot[-1] += value

    def flush(self) -> None:
        pending, self.pending = self.pending, {}
        for labels, slot in pending.items():
            child = self.metric.labels(*labels)
            for i, count in enumerate(slot[:-1]):
                if count:
                    child._buckets[i].inc(count)
            child._sum.inc(slot[-1])


class Metrics:
    CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

    def __init__(
        self, multiprocess_dir: str | None = None, active_users_window: float = 300.0
    ) -> None:
        self._multiprocess_dir = multiprocess_dir
        self.active_users_window = active_users_window
        self.registry = r = CollectorRegistry(auto_describe=True)
        self._requests = _Counter(
            Counter(
                "gateway_requests_total",
                "Requests by method, endpoint and HTTP status",
                ["method", "endpoint", "status"],
                registry=r,
            )
        )
        self._latency = _Histogram(
            Histogram(
                "gateway_request_duration_seconds",
                "Time from request to the last byte of the response, by endpoint",
                ["endpoint"],
                buckets=LATENCY_BUCKETS,
                registry=r,
            ),
            LATENCY_BUCKETS,
        )
        self._inference = _Counter(
            Counter(
                "inference_requests_total",
                "Inference requests by model and type (chat, completions, embeddings)",
                ["model", "type"],
                registry=r,
            )
        )
        self._variants = _Counter(
            Counter(
                "gateway_variant_requests_total",
                "Inference requests by split (A/B test or canary) and the variant they got",
                ["split", "variant", "status"],
                registry=r,
            )
        )
        self._upstream_latency = _Histogram(
            Histogram(
                "gateway_upstream_duration_seconds",
                "Time spent waiting on the upstream deployment",
                ["model", "deployment"],
                buckets=LATENCY_BUCKETS,
                registry=r,
            ),
            LATENCY_BUCKETS,
        )
        self._ttft = _Histogram(
            Histogram(
                "gateway_time_to_first_token_seconds",
                "Time from sending a stream's request to its first chunk sent to the client",
                ["model", "deployment"],
                buckets=TTFT_BUCKETS,
                registry=r,
            ),
            TTFT_BUCKETS,
        )
        self._tokens = _Counter(
            Counter(
                "gateway_tokens_total",
                "Tokens counted from upstream usage, by direction (input|output)",
                ["model", "direction"],
                registry=r,
            )
        )
        self._cost = _Counter(
            Counter(
                "gateway_cost_total",
                "Spend by model, from token usage and the deployments' prices per 1k tokens",
                ["model"],
                registry=r,
            )
        )
        self._upstream_errors = _Counter(
            Counter(
                "gateway_upstream_errors_total",
                "Upstream failures by deployment and kind",
                ["deployment", "kind"],
                registry=r,
            )
        )
        self._auth_failures = _Counter(
            Counter("gateway_auth_failures_total", "Failed authentications", ["reason"], registry=r)
        )
        # Admission control (seed 003 names rate_limit_exceeded_total).
        self._limit_exceeded = _Counter(
            Counter(
                "rate_limit_exceeded_total",
                "Requests refused by a limit, by tier, limit (rpm, tpm, concurrent...) and "
                "scope (key, owner, ip, model, endpoint, global)",
                ["tier", "limit", "scope"],
                registry=r,
            )
        )
        self._admissions = _Counter(
            Counter(
                "gateway_admissions_total",
                "Admission decisions on limited requests, by tier and decision "
                "(admitted, refused, unavailable)",
                ["tier", "decision"],
                registry=r,
            )
        )
        self._tokens_reserved = _Counter(
            Counter(
                "gateway_tokens_reserved_total",
                "Tokens reserved at admission (prompt estimate plus max_tokens), by tier",
                ["tier"],
                registry=r,
            )
        )
        self._tokens_settled = _Counter(
            Counter(
                "gateway_tokens_settled_total",
                "Tokens the admitted requests were settled to (their usage), by tier",
                ["tier"],
                registry=r,
            )
        )
        self._redis_latency = _Histogram(
            Histogram(
                "gateway_limiter_redis_seconds",
                "Time of one round trip of the limiter to Redis (a batch of admissions and "
                "settlements), by what it carried (admit: at least one admission; settle)",
                ["op"],
                buckets=LATENCY_BUCKETS,
                registry=r,
            ),
            LATENCY_BUCKETS,
        )
        self._redis_errors = _Counter(
            Counter(
                "gateway_limiter_redis_errors_total",
                "Failed limiter round trips to Redis, by kind (timeout, error)",
                ["kind"],
                registry=r,
            )
        )
        self._redis_transitions = _Counter(
            Counter(
                "gateway_limiter_redis_transitions_total",
                "The limiter losing (down) or regaining (up) Redis",
                ["state"],
                registry=r,
            )
        )
        self._queue_wait = _Histogram(
            Histogram(
                "gateway_queue_wait_seconds",
                "Time requests waited for a slot of a saturated model, by tier",
                ["tier"],
                buckets=QUEUE_BUCKETS,
                registry=r,
            ),
            QUEUE_BUCKETS,
        )
        self._queue_rejected = _Counter(
            Counter(
                "gateway_queue_rejected_total",
                "Requests refused a slot of a saturated model, by tier and reason (full|timeout)",
                ["model", "tier", "reason"],
                registry=r,
            )
        )
        self._queue_length = Gauge(
            "gateway_queue_length",
            "Requests waiting for a slot of a saturated model, by tier",
            ["model", "tier"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self._in_flight = Gauge(
            "gateway_requests_in_flight",
            "Inference requests being served now",
            registry=r,
            multiprocess_mode="livesum",
        )
        self._active_users = Gauge(
            "gateway_active_users",
            "Distinct callers (keys, token subjects) seen within the active-users window",
            registry=r,
            multiprocess_mode="livesum",  # per worker: a caller on two workers counts twice
        )
        self._ledger = Counter(
            "gateway_ledger_records_total",
            "Usage ledger records by what became of them: queued, written to the store, "
            "spooled while it was down, replayed from the spool, dropped (spool unwritable)",
            ["state"],
            registry=r,
        )
        for state in LEDGER_STATES:
            self._ledger.labels(state)  # shown at 0 from the start: dropped should stay there
        self._fallbacks = _Counter(
            Counter(
                "gateway_fallback_responses_total",
                "Requests answered with the model's fallback response (every deployment down)",
                ["model"],
                registry=r,
            )
        )
        self._retries = _Counter(
            Counter(
                "gateway_retries_total",
                "Attempts made on another deployment after a failed one, by model",
                ["model"],
                registry=r,
            )
        )
        # Seed 003's name; per process (each worker keeps its own breakers).
        self._circuit = Gauge(
            "circuit_breaker_state",
            "A deployment's circuit: 0 closed, 1 open, 2 half-open",
            ["model", "deployment"],
            registry=r,
            multiprocess_mode="max",
        )
        self._deployment_up = Gauge(
            "gateway_deployment_up",
            "1 while a deployment may be picked (circuit not open, not ejected, probes up)",
            ["model", "deployment"],
            registry=r,
            multiprocess_mode="min",
        )
        self._circuit_opens = Counter(
            "gateway_circuit_opens_total",
            "Times a deployment's circuit opened",
            ["model", "deployment"],
            registry=r,
        )
        self._ejections = Counter(
            "gateway_outlier_ejections_total",
            "Times outlier detection ejected a deployment",
            ["model", "deployment"],
            registry=r,
        )
        self._probes = Counter(
            "gateway_health_probes_total",
            "Active health probes of a deployment, by result (ok, failed)",
            ["model", "deployment", "result"],
            registry=r,
        )
        # The deployments' own figures, shown only while the scraper holds some.
        self._scraped = tuple(
            Gauge(
                name,
                text,
                ["model", "deployment"],
                registry=r,
                multiprocess_mode="max",
            )
            for name, text in (
                (
                    "gateway_deployment_requests_waiting",
                    "Requests waiting at a deployment, from its own /metrics as last scraped",
                ),
                (
                    "gateway_deployment_requests_running",
                    "Requests running at a deployment, from its own /metrics as last scraped",
                ),
                (
                    "gateway_deployment_kv_cache_usage",
                    "A deployment's KV-cache use (0 to 1), from its own /metrics as last scraped",
                ),
            )
        )
        self._scraped_shown: set[tuple[int, Labels]] = set()
        # Set by the health checks' pings (api/health.py), not by traffic; "livemin": one
        # worker that cannot reach it is enough to say so, a worker gone says nothing.
        self._dependency_up = Gauge(
            "gateway_dependency_up",
            "1 while a shared dependency (database, redis) answered its latest health ping",
            ["dependency"],
            registry=r,
            multiprocess_mode="livemin",
        )
        self._reloads = Counter(
            "gateway_config_reloads_total",
            "Configuration reloads, by trigger (api, file, SIGHUP, event) and outcome "
            "(ok, rejected: the file had problems)",
            ["trigger", "outcome"],
            registry=r,
        )
        self._reload_ok = Gauge(
            "gateway_config_last_reload_successful",
            "1 unless the last reload was refused (the file has problems)",
            registry=r,
            multiprocess_mode="livemin",
        )
        self._reload_ok.set(1)
        self._lookups = Counter(
            "gateway_discovery_lookups_total",
            "DNS lookups of a model's discover entries, by result (ok, failed: the last "
            "answer kept)",
            ["model", "result"],
            registry=r,
        )
        self._fleet_health: Callable[[], Iterable[DeploymentHealthRow]] | None = None
        self._fleet_seen: dict[tuple[str, str], DeploymentHealthRow] = {}
        # The ledger writer's totals, read at each flush, and the part already counted.
        self._ledger_counts: Callable[[], Mapping[str, int]] | None = None
        self._ledger_seen: dict[str, int] = dict.fromkeys(LEDGER_STATES, 0)
        self._pending = (
            self._requests,
            self._latency,
            self._inference,
            self._variants,
            self._upstream_latency,
            self._ttft,
            self._tokens,
            self._cost,
            self._upstream_errors,
            self._auth_failures,
            self._limit_exceeded,
            self._admissions,
            self._tokens_reserved,
            self._tokens_settled,
            self._redis_latency,
            self._redis_errors,
            self._redis_transitions,
            self._queue_wait,
            self._queue_rejected,
            self._fallbacks,
            self._retries,
        )
        self._queue_lengths: dict[Labels, int] = {}
        self.in_flight = 0  # inference requests being served: changed by the accounting only
        self._seen: dict[str, float] = {}  # caller -> when last seen (the loop's clock)
        self._flusher: asyncio.Task[None] | None = None

    # The hot path: dict updates only.

    def request(self, method: str, endpoint: str, status: int, seconds: float) -> None:
        self._requests.inc((method, endpoint, str(status)))
        self._latency.observe((endpoint,), seconds)

    def inference(self, model: str, kind: str) -> None:
        self._inference.inc((model, kind))

    def variant(self, split: str, variant: str, status: int) -> None:
        self._variants.inc((split, variant, str(status)))

    def upstream(self, model: str, deployment: str, seconds: float) -> None:
        self._upstream_latency.observe((model, deployment), seconds)

    def ttft(self, model: str, deployment: str, seconds: float) -> None:
        self._ttft.observe((model, deployment), seconds)

    def tokens(self, model: str, prompt: int, completion: int) -> None:
        if prompt:
            self._tokens.inc((model, "input"), prompt)
        if completion:
            self._tokens.inc((model, "output"), completion)

    def cost(self, model: str, amount: float) -> None:
        self._cost.inc((model,), amount)

    def upstream_error(self, deployment: str, kind: str) -> None:
        self._upstream_errors.inc((deployment, kind))

    def auth_failure(self, reason: str) -> None:
        self._auth_failures.inc((reason,))

    def admission(self, tier: str, decision: str) -> None:
        self._admissions.inc((tier, decision))

    def admitted(self, tier: str, tokens: int) -> None:
        """An admission and its token reservation: ``admission(tier, "admitted")`` and
        ``tokens_reserved``, in one call (the hot path of every limited request)."""
        pending, labels = self._admissions.pending, (tier, "admitted")
        pending[labels] = pending.get(labels, 0.0) + 1.0
        if tokens:
            reserved, tier_only = self._tokens_reserved.pending, (tier,)
            reserved[tier_only] = reserved.get(tier_only, 0.0) + tokens

    def limit_exceeded(self, tier: str, limit: str, scope: str) -> None:
        self._limit_exceeded.inc((tier, limit, scope))

    def tokens_reserved(self, tier: str, tokens: int) -> None:
        self._tokens_reserved.inc((tier,), tokens)

    def tokens_settled(self, tier: str, tokens: int) -> None:
        pending, labels = self._tokens_settled.pending, (tier,)
        pending[labels] = pending.get(labels, 0.0) + tokens

    def limiter_redis(self, op: str, seconds: float) -> None:
        self._redis_latency.observe((op,), seconds)

    def limiter_redis_error(self, kind: str) -> None:
        self._redis_errors.inc((kind,))

    def limiter_redis_state(self, state: str) -> None:
        self._redis_transitions.inc((state,))

    def fallback(self, model: str) -> None:
        self._fallbacks.inc((model,))

    def retries(self, model: str, count: int) -> None:
        self._retries.inc((model,), count)

    # Only while a model is saturated.

    def queue_length(self, model: str, tier: str, length: int) -> None:
        self._queue_lengths[(model, tier)] = length

    def queue_wait(self, tier: str, seconds: float) -> None:
        self._queue_wait.observe((tier,), seconds)

    def queue_rejected(self, model: str, tier: str, reason: str) -> None:
        self._queue_rejected.inc((model, tier, reason))

    def seen(self, caller: str, now: float) -> None:
        """``caller`` made a request at ``now`` (``time.perf_counter``)."""
        seen = self._seen
        if len(seen) < MAX_ACTIVE_USERS or caller in seen:
            seen[caller] = now

    # Off the hot path.

    def dependency(self, name: str, up: bool) -> None:
        """The latest health ping of ``name`` (``database``, ``redis``) answered, or not."""
        self._dependency_up.labels(name).set(1 if up else 0)

    def config_reload(self, trigger: str, outcome: str) -> None:
        self._reloads.labels(trigger, outcome).inc()
        self._reload_ok.set(1 if outcome == "ok" else 0)

    def discovery_lookup(self, model: str, ok: bool) -> None:
        self._lookups.labels(model, "ok" if ok else "failed").inc()

    def follow_ledger(self, counts: Callable[[], Mapping[str, int]]) -> None:
        """Count the ledger writer's records: ``counts`` returns its totals by state (the
        writer counts in plain integers; they are read here, at each flush)."""
        self._ledger_counts = counts

    def follow_fleet(self, rows: Callable[[], Iterable[DeploymentHealthRow]]) -> None:
        """Show the deployments' health: ``rows`` reads the fleet's states at each flush (the
        breakers and probes count in plain integers, off the metrics' path)."""
        self._fleet_health = rows

    def _flush_fleet(self) -> None:
        if self._fleet_health is None:
            return
        seen = self._fleet_seen
        rows = list(self._fleet_health())
        for row in rows:
            labels = (row.model, row.deployment)
            self._circuit.labels(*labels).set(row.circuit)
            self._deployment_up.labels(*labels).set(1 if row.up else 0)
            before = seen.get(labels)
            # A running total that went down is a new state object (the deployment was
            # removed and added again): count it from zero.
            for counter, now, was, extra in (
                (self._circuit_opens, row.opens, before.opens if before else 0, ()),
                (self._ejections, row.ejections, before.ejections if before else 0, ()),
                (self._probes, row.probes_ok, before.probes_ok if before else 0, ("ok",)),
                (
                    self._probes,
                    row.probes_failed,
                    before.probes_failed if before else 0,
                    ("failed",),
                ),
            ):
                child = counter.labels(*labels, *extra)
                delta = now - was if now >= was else now
                if delta:
                    child.inc(delta)
            seen[labels] = row
        self._flush_scraped(rows)

    def _flush_scraped(self, rows: list[DeploymentHealthRow]) -> None:
        # Only the figures the scraper holds now are shown: one it dropped (stale, never
        # read), or a deployment's that left the fleet, is removed rather than left at its
        # last value, since an old "idle" must not look current. (With several workers a
        # removed series stays in the multiprocess files at its last value.)
        gauges = self._scraped
        shown: set[tuple[int, Labels]] = set()
        for row in rows:
            labels = (row.model, row.deployment)
            for i, value in enumerate((row.waiting, row.running, row.kv_usage)):
                if value is not None:
                    gauges[i].labels(*labels).set(value)
                    shown.add((i, labels))
        for i, gone in self._scraped_shown - shown:
            gauges[i].remove(*gone)
        self._scraped_shown = shown

    def _flush_ledger(self) -> None:
        if self._ledger_counts is None:
            return
        seen = self._ledger_seen
        for state, total in self._ledger_counts().items():
            delta = total - seen.get(state, 0)
            if delta > 0 and state in seen:
                self._ledger.labels(state).inc(delta)
                seen[state] = total

    def flush(self) -> None:
        now = time.perf_counter()  # the clock ``seen`` is given
        for pending in self._pending:
            pending.flush()
        self._flush_ledger()
        self._flush_fleet()
        self._in_flight.set(self.in_flight)
        for labels, length in self._queue_lengths.items():
            self._queue_length.labels(*labels).set(length)
        horizon = now - self.active_users_window
        seen = self._seen
        for caller in [c for c, at in seen.items() if at < horizon]:
            del seen[caller]
        self._active_users.set(len(seen))

    def start(self) -> None:
        """With several workers: flush every second (a scrape may reach another worker)."""
        if self._multiprocess_dir is not None and self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_every_second())

    async def _flush_every_second(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            self.flush()

    async def stop(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        self.flush()

    def render(self) -> bytes:
        self.flush()
        if self._multiprocess_dir is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=self._multiprocess_dir)  # type: ignore[no-untyped-call]
        return generate_latest(merged)
