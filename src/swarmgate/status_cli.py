"""``swarmgate status``: what a RUNNING gateway is doing, read from its HTTP API.

Models and their deployments (health, circuit, why one is out of rotation, requests in flight
of its capacity) come from ``/v1/cluster/status`` (a key with ``cluster:read``), or without a
key from the unauthenticated ``/models/status`` (models only). Traffic comes from two reads of
``/metrics`` ``--window`` seconds apart: requests per second and the share answered with a
5xx over that window (``--window 0``: since the gateway started), upstream failures per
deployment likewise. Operations routes (health, metrics, status) are not traffic: the
scrapers and this command would otherwise dilute the error rate.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import click
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from swarmgate.workers_cli import URL, request

OPS_ENDPOINTS = frozenset(
    {
        "/health",
        "/health/live",
        "/health/ready",
        "/metrics",
        "/models/status",
        "/v1/cluster/status",
        "/api/v1/cluster/status",
    }
)
STYLES = {
    "healthy": "green",
    "ready": "green",
    "closed": "green",
    "degraded": "yellow",
    "draining": "yellow",
    "half_open": "yellow",
    "unhealthy": "red",
    "open": "red",
    "not_ready": "red",
}


@dataclass(frozen=True)
class Sample:
    """The counters of one read of ``/metrics`` that the status shows."""

    at: float
    requests: int = 0  # traffic, not operations routes
    errors: int = 0  # of which answered with a 5xx
    upstream_errors: dict[str, int] = field(default_factory=dict)  # by deployment


def parse_metrics(text: str, at: float) -> Sample:
    requests = errors = 0
    upstream: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "gateway_requests_total":
                if s.labels.get("endpoint") in OPS_ENDPOINTS:
                    continue
                requests += int(s.value)
                if s.labels.get("status", "").startswith("5"):
                    errors += int(s.value)
            elif s.name == "gateway_upstream_errors_total":
                name = s.labels.get("deployment", "")
                upstream[name] = upstream.get(name, 0) + int(s.value)
    return Sample(at, requests, errors, upstream)


@dataclass(frozen=True)
class Traffic:
    """What happened between two samples (or since start, from an empty one)."""

    seconds: float | None  # None: since the gateway started
    requests: int
    errors: int
    upstream_errors: dict[str, int]

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @property
    def rps(self) -> float | None:
        return self.requests / self.seconds if self.seconds else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "window_seconds": self.seconds,
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "requests_per_second": self.rps,
            "upstream_errors": self.upstream_errors,
        }


def traffic(before: Sample | None, after: Sample) -> Traffic:
    """Counters only grow, unless the gateway restarted in between: then ``after`` alone."""
    if before is None or after.requests < before.requests:
        return Traffic(None, after.requests, after.errors, dict(after.upstream_errors))
    upstream = {
        name: count - before.upstream_errors.get(name, 0)
        for name, count in after.upstream_errors.items()
    }
    return Traffic(
        after.at - before.at,
        after.requests - before.requests,
        after.errors - before.errors,
        {name: n for name, n in upstream.items() if n > 0},
    )


def _metrics(url: str) -> Sample:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=10) as response:
            return parse_metrics(response.read().decode(), time.monotonic())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        click.echo(f"swarmgate: cannot read the gateway's metrics at {url}: {exc}", err=True)
        sys.exit(1)


def _styled(text: str) -> str:
    style = STYLES.get(text)
    return f"[{style}]{text}[/{style}]" if style else text


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def render(console: Console, status: dict[str, Any], flow: Traffic) -> None:
    title = f"{status.get('gateway', 'swarmgate')}: {_styled(status['status'])}"
    summary = status.get("summary")
    if summary:
        title += (
            f"  {summary['healthy']}/{summary['workers']} deployments healthy, "
            f"{summary['in_flight']}/{summary['capacity']} in flight"
        )
    console.print(title)
    window = "since start" if flow.seconds is None else f"last {flow.seconds:.1f}s"
    rps = "" if flow.rps is None else f", {flow.rps:.1f}/s"
    console.print(
        f"traffic ({window}): {flow.requests} requests{rps}, "
        f"{flow.errors} errors (5xx), error rate {_percent(flow.error_rate)}"
    )
    detailed = "workers" in status  # then why a deployment is down is said in its row
    models = Table(title="models", title_justify="left")
    for column in ("MODEL", "STATUS", "HEALTHY", "IN FLIGHT", "BALANCER"):
        models.add_column(column, no_wrap=True)
    if not detailed:
        models.add_column("DOWN")
    for name, m in sorted(status["models"].items()):
        row = [
            name,
            _styled(m["status"]),
            f"{m['healthy']}/{m['deployments']}",
            f"{m['in_flight']}/{m['capacity']}",
            str(m.get("balancer", "")),
        ]
        if not detailed:
            row.append(", ".join(f"{d}: {why}" for d, why in m.get("down", {}).items()) or "-")
        models.add_row(*row)
    console.print(models)
    if not detailed:
        console.print("(deployments: give --api-key, a key with cluster:read)")
        return
    workers = Table(title="deployments", title_justify="left")
    for column in ("DEPLOYMENT", "MODEL", "STATUS", "CIRCUIT", "IN FLIGHT", "ERRORS"):
        workers.add_column(column, no_wrap=True)
    workers.add_column("DOWN")  # the URLs: swarmgate workers list, or --json
    for w in status["workers"]:
        workers.add_row(
            w["id"],
            w["model"],
            _styled(w["status"]),
            _styled(w["circuit"]),
            f"{w['in_flight']}/{w['max_concurrent']}",
            str(flow.upstream_errors.get(w["id"], 0)),
            w.get("down_reason") or "-",
        )
    console.print(workers)


@click.command()
@URL
@click.option(
    "--api-key",
    envvar="SWARMGATE_API_KEY",
    show_envvar=True,
    default=None,
    help="A key with cluster:read, for the deployments (without it: models only).",
)
@click.option(
    "--window",
    type=click.FloatRange(0, 300),
    default=2.0,
    show_default=True,
    help="Seconds over which traffic and errors are measured (0: since the gateway started).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON document, not tables.")
def status(url: str, api_key: str | None, window: float, as_json: bool) -> None:
    """A running gateway: its models, their deployments and health, requests in flight, and
    the recent request and error rate."""
    before = _metrics(url) if window > 0 else None
    if before is not None:
        time.sleep(window)
    if api_key:
        document = request(url, api_key, "GET", "/v1/cluster/status")
    else:
        document = _unauthenticated(url)
    flow = traffic(before, _metrics(url))
    if as_json:
        click.echo(json.dumps({**document, "traffic": flow.as_dict()}, indent=2))
        return
    render(Console(highlight=False), document, flow)


def _unauthenticated(url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/models/status", timeout=10) as response:
            document: dict[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        # 503 while not ready: the body still says what each model is.
        document = json.loads(exc.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        click.echo(f"swarmgate: cannot reach the gateway at {url}: {exc}", err=True)
        sys.exit(1)
    return document
