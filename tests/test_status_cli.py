"""``swarmgate status`` against a running gateway: models, deployments and their health, in
flight, and the recent error rate, read from its HTTP API."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator

import openai
import pytest

from swarmgate.status_cli import parse_metrics, traffic
from tests.api.e2e import FAST, MESSAGES
from tests.plugins.processes import Gateway, Sim
from tests.test_cli import run

METRICS = """\
# TYPE gateway_requests_total counter
gateway_requests_total{method="POST",endpoint="/v1/chat/completions",status="200"} 7.0
gateway_requests_total{method="POST",endpoint="/v1/chat/completions",status="502"} 2.0
gateway_requests_total{method="POST",endpoint="/v1/embeddings",status="429"} 1.0
gateway_requests_total{method="GET",endpoint="/metrics",status="200"} 40.0
gateway_requests_total{method="GET",endpoint="/health",status="503"} 5.0
# TYPE gateway_upstream_errors_total counter
gateway_upstream_errors_total{deployment="a",kind="status"} 2.0
gateway_upstream_errors_total{deployment="a",kind="connect"} 1.0
gateway_upstream_errors_total{deployment="b",kind="status"} 0.0
"""


def test_traffic_counts_requests_not_operations_routes() -> None:
    sample = parse_metrics(METRICS, at=10.0)
    assert (sample.requests, sample.errors) == (10, 2)  # 429 is the caller's, not an error
    assert sample.upstream_errors == {"a": 3, "b": 0}
    since_start = traffic(None, sample)
    assert since_start.seconds is None and since_start.error_rate == pytest.approx(0.2)


def test_traffic_over_a_window_is_the_difference() -> None:
    before = parse_metrics(METRICS, at=10.0)
    later = METRICS.replace('status="200"} 7.0', 'status="200"} 15.0').replace(
        'kind="connect"} 1.0', 'kind="connect"} 4.0'
    )
    flow = traffic(before, parse_metrics(later, at=12.0))
    assert (flow.seconds, flow.requests, flow.errors) == (2.0, 8, 0)
    assert flow.rps == 4.0 and flow.error_rate == 0.0
    assert flow.upstream_errors == {"a": 3}
    # A restarted gateway's counters start again: what it did since its start is shown.
    restarted = traffic(before, parse_metrics(METRICS.replace("7.0", "1.0"), at=12.0))
    assert restarted.seconds is None and restarted.requests == 4


@pytest.fixture
def gateway(
    sim_factory: Callable[..., Sim], gateway_factory: Callable[..., Gateway]
) -> Iterator[tuple[Gateway, openai.OpenAI]]:
    sim = sim_factory({"chat": FAST}, replicas=2)
    urls = list(sim.urls.values())
    gw = gateway_factory(
        {
            "server": {"name": "edge-1"},
            "models": {
                "chat": {
                    "deployments": [
                        {"url": urls[0], "name": "good"},
                        {"url": urls[1], "name": "bad"},
                    ],
                    "circuit_breaker": {"threshold": 2, "open_seconds": 600},
                    "retry": {"max_attempts": 1},
                    "health_check": {"enabled": False},
                    "balancer": "round_robin",
                }
            },
            "limits": {"enabled": False},
        }
    )
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.admin_key, max_retries=0)
    yield gw, client
    client.close()


def _fail(client: openai.OpenAI, n: int) -> int:
    failed = 0
    for _ in range(n):
        try:
            client.chat.completions.create(
                model="chat", messages=MESSAGES, extra_headers={"X-Sim-Fail": "error:500"}
            )
        except openai.APIStatusError:
            failed += 1
    return failed


def test_status_shows_models_deployments_health_and_the_error_rate(
    gateway: tuple[Gateway, openai.OpenAI],
) -> None:
    gw, client = gateway
    for _ in range(4):
        client.chat.completions.create(model="chat", messages=MESSAGES)
    # Every request with the header fails, wherever round robin sends it: two in a row on
    # each deployment open both circuits.
    assert _fail(client, 4) == 4
    result = run("status", "--url", gw.url, "--api-key", gw.admin_key, "--window", "0", "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["gateway"] == "edge-1"
    assert document["traffic"]["requests"] == 8
    assert document["traffic"]["errors"] == 4
    assert document["traffic"]["error_rate"] == 0.5
    workers = {w["id"]: w for w in document["workers"]}
    assert set(workers) == {"good", "bad"}
    assert {w["circuit"] for w in workers.values()} == {"open"}
    assert document["models"]["chat"]["status"] == "unhealthy"

    table = run("status", "--url", gw.url, "--api-key", gw.admin_key, "--window", "0")
    assert table.returncode == 0, table.stderr
    out = table.stdout
    assert "edge-1: unhealthy" in out
    assert "8 requests" in out and "4 errors (5xx), error rate 50.0%" in out
    for word in ("models", "deployments", "good", "bad", "open", "round_robin", "circuit open"):
        assert word in out, out


def test_status_over_a_window_sees_only_recent_traffic(
    gateway: tuple[Gateway, openai.OpenAI],
) -> None:
    gw, client = gateway
    assert _fail(client, 1) == 1  # before the window: not counted in it
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            client.chat.completions.create(model="chat", messages=MESSAGES)

    worker = threading.Thread(target=load)
    worker.start()
    try:
        result = run("status", "--url", gw.url, "--api-key", gw.admin_key, "--window", "1")
    finally:
        stop.set()
        worker.join()
    assert result.returncode == 0, result.stderr
    assert "traffic (last 1." in result.stdout
    assert "0 errors (5xx), error rate 0.0%" in result.stdout
    assert "/s, " in result.stdout  # a request rate


def test_without_a_key_status_shows_the_models_only(
    gateway: tuple[Gateway, openai.OpenAI],
) -> None:
    gw, _ = gateway
    result = run("status", "--url", gw.url, "--window", "0")
    assert result.returncode == 0, result.stderr
    assert "ready" in result.stdout and "chat" in result.stdout
    assert "give --api-key" in result.stdout
    bad_key = run("status", "--url", gw.url, "--api-key", "sk-sg-nope", "--window", "0")
    assert bad_key.returncode == 1
    assert "401" in bad_key.stderr


def test_status_of_an_unreachable_gateway_fails_clearly() -> None:
    down = run("status", "--url", "http://127.0.0.1:9", "--window", "0")
    assert down.returncode == 1
    assert "cannot reach the gateway at http://127.0.0.1:9" in down.stderr
