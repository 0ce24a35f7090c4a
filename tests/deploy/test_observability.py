"""The Grafana dashboard and the Prometheus alert rules query only what the gateway exports.

Every PromQL expression in ``deploy/grafana/swarmgate.json`` (panels and template variables)
and ``deploy/prometheus/alerts.yml`` is parsed (``promql-parser``, a real PromQL parser) for
the metric names it selects; a real gateway in front of the simulator is driven through
successes, a stream, a limited request, failures and an open circuit, and its ``/metrics``
must declare each of those names, and show samples for all but the few that need conditions
not driven here. ``promtool`` (Debian's ``prometheus``) checks the rules and runs their unit
tests (``alerts_test.yml``: each alert fires when it should, and not before).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.plugins.processes import Gateway, Sim, free_port

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "swarmgate.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"

# Made by Prometheus itself for each scrape, not by the gateway.
PROMETHEUS_OWN = {"up"}
# Exported, but with samples only under conditions this test does not drive: a saturated
# model's line, outlier detection's minimum of requests, the limiter on Redis.
CONDITIONAL = {
    "gateway_queue_length",
    "gateway_queue_rejected_total",
    "gateway_outlier_ejections_total",
    "gateway_limiter_redis_seconds_bucket",
    "gateway_limiter_redis_errors_total",
}


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects. Grafana's variables are replaced first:
    ``$__rate_interval`` and the like by a duration, the dashboard's own by a regex."""
    expr = re.sub(r"\$\{?__\w+\}?", "5m", expr)
    expr = re.sub(r"\$\{?\w+\}?", ".*", expr)
    names: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"a selector without a metric name in {expr!r}"
            names.add(node.name)
        elif isinstance(node, promql_parser.MatrixSelector):
            walk(node.vector_selector)
        elif isinstance(node, promql_parser.BinaryExpr):
            walk(node.lhs)
            walk(node.rhs)
        elif isinstance(node, promql_parser.Call):
            for arg in node.args:
                walk(arg)
        elif isinstance(node, promql_parser.AggregateExpr):
            walk(node.expr)
            if node.param is not None:
                walk(node.param)
        elif isinstance(
            node, promql_parser.ParenExpr | promql_parser.UnaryExpr | promql_parser.SubqueryExpr
        ):
            walk(node.expr)
        else:
            assert isinstance(node, promql_parser.NumberLiteral | promql_parser.StringLiteral), (
                f"unknown PromQL node {type(node).__name__} in {expr!r}"
            )

    walk(promql_parser.parse(expr))
    return names


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # a collapsed row holds its panels


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [
        target["expr"]
        for panel in _panels(dashboard["panels"])
        for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        query = query["query"] if isinstance(query, dict) else query
        # Grafana's label_values(selector, label): the selector is PromQL.
        found = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
        assert found, query
        queries.append(found.group(1))
    return queries


def alert_queries() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def test_the_name_finder_sees_through_functions_aggregations_and_operators() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le) (rate(a_bucket{m=~"$model"}[$__rate_interval])))'
        " / on() group_left() (sum(b_total offset 5m) + -max_over_time(c[5m:1m]))"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c"}
    with pytest.raises(ValueError):
        metric_names("sum(rate(a_total[5m])")  # unbalanced: not PromQL
    with pytest.raises(AssertionError):
        metric_names('{__name__=~"gateway_.*"}')  # no name to check


def test_the_dashboard_covers_what_the_issue_asks_for() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = list(_panels(dashboard["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()  # Grafana's grid: 24 columns; no two panels overlap
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        area = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
    for panel in panels:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]
    queried = set().union(*map(metric_names, dashboard_queries()))
    # traffic, errors, latency and TTFT, tokens and spend, limits, circuits, health, in-flight
    assert {
        "gateway_requests_total",
        "gateway_request_duration_seconds_bucket",
        "gateway_time_to_first_token_seconds_bucket",
        "gateway_tokens_total",
        "gateway_cost_total",
        "rate_limit_exceeded_total",
        "circuit_breaker_state",
        "gateway_deployment_up",
        "gateway_requests_in_flight",
        "gateway_dependency_up",
    } <= queried
    alerts = {r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]}
    assert {
        "SwarmgateHighErrorRate",
        "SwarmgateHighLatency",
        "SwarmgateCircuitOpen",
        "SwarmgateDatabaseDown",
        "SwarmgateRedisDown",
    } <= alerts


def _promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: scripts/bootstrap.sh test installs Debian's prometheus"
    return found


def test_promtool_accepts_the_rules_and_the_config_and_their_unit_tests_pass() -> None:
    promtool = _promtool()
    for args in (
        ["check", "rules", str(ALERTS)],
        ["check", "config", str(PROMETHEUS)],  # with the rules it names, beside it
        ["test", "rules", "alerts_test.yml"],
    ):
        done = subprocess.run(
            [promtool, *args],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr


# The gateway, driven through what the dashboard and the alerts show.

FAST = {"ttft_ms": 1, "tokens_per_second": 2000, "max_tokens_default": 4}


def _post(gw: Gateway, body: dict[str, Any], key: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(
        gw.url + "/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={
            "Authorization": f"Bearer {key or gw.admin_key}",
            "Content-Type": "application/json",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return int(r.status), r.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def _chat(gw: Gateway, model: str, **extra: Any) -> int:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
    return _post(gw, body)[0]


def _scrape(gw: Gateway) -> tuple[set[str], set[str]]:
    """The names ``/metrics`` declares (from each family's type) and those with samples."""
    with urllib.request.urlopen(gw.url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_sum", "_count"),
        "summary": ("_sum", "_count", ""),
    }
    declared: set[str] = set()
    sampled: set[str] = set()
    for family in text_string_to_metric_families(text):
        declared |= {family.name + s for s in suffixes.get(family.type, ("",))}
        sampled |= {sample.name for sample in family.samples}
    return declared, sampled


@pytest.fixture
def driven_gateway(
    sim_factory: Callable[..., Sim], gateway_factory: Callable[..., Gateway]
) -> Gateway:
    sim = sim_factory({"chat": FAST, "limited": FAST})
    dead = f"http://127.0.0.1:{free_port()}"
    fast_probes = {"interval": 0.2, "unhealthy_interval": 0.2, "timeout": 0.2}
    gw = gateway_factory(
        {
            "models": {
                "chat": {
                    "health_check": fast_probes,
                    "deployments": [
                        {
                            "url": sim.url,
                            "name": "chat-a",
                            "input_cost_per_1k": 0.5,
                            "output_cost_per_1k": 1.0,
                        },
                        {"url": dead, "name": "chat-dead"},
                    ],
                },
                "limited": {"deployments": [{"url": sim.url, "name": "limited-a"}]},
                "broken": {"deployments": [{"url": dead, "name": "broken-a"}]},
            },
            "limits": {"models": {"limited": {"rpm": 1}}},
        }
    )
    for _ in range(6):  # the dead deployment is tried, failed over from, then its circuit opens
        assert _chat(gw, "chat") == 200
    assert _chat(gw, "chat", stream=True) == 200  # time to first token
    assert [_chat(gw, "limited") for _ in range(2)] == [200, 429]
    assert [_chat(gw, "broken") for _ in range(6)] == [502] * 5 + [503]  # then the fallback
    assert _post(gw, {"model": "chat"}, key="sk-sg-" + "0" * 64)[0] == 401
    return gw


def test_every_metric_the_dashboard_and_the_alerts_query_is_exported(
    driven_gateway: Gateway,
) -> None:
    queried = set().union(*map(metric_names, dashboard_queries() + alert_queries()))
    deadline = time.monotonic() + 10
    while True:  # the probes of the dead deployment fail within a second
        declared, sampled = _scrape(driven_gateway)
        if "gateway_health_probes_total" in sampled or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    unknown = queried - declared - PROMETHEUS_OWN
    assert not unknown, f"queried but not exported: {sorted(unknown)}"
    undriven = queried - sampled - PROMETHEUS_OWN
    assert undriven <= CONDITIONAL, f"exported but never counted: {sorted(undriven)}"
