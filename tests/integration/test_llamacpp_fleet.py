"""llama.cpp's real server as one deployment of a model beside simulated ones, through a real
``swarmgate serve`` with every balancer strategy; its ``/metrics`` scraped and routed on.

The real server's exposition is read as it is (``llamacpp:requests_processing`` and
``llamacpp:requests_deferred``; this build exports no KV-cache gauge), and the proof that the
resource-aware balancer uses it is a shift: load put on llama-server by another client, which
the gateway can see only through the scrape, moves the gateway's traffic to the simulators,
and back when it ends.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, get_args
from urllib.parse import urlsplit

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from swarmgate.config import Balancing
from tests.integration.gguf_factory import MODEL_ALIAS
from tests.plugins.processes import Gateway, Processes, Sim

pytestmark = pytest.mark.slow

STRATEGIES: tuple[str, ...] = get_args(Balancing.model_fields["strategy"].annotation)
DEFAULT = "unnamed"  # the model that names no balancer
REQUESTS = 24  # per strategy: enough that a llama-server left out is not down to chance
# Fast enough to keep each strategy's round short, slower than the tiny model (below).
QUICK_SIM = {"ttft_ms": 20, "tokens_per_second": 1000, "slots": 8}
# Much slower than llama-server's few milliseconds: left to the latency weight alone, the
# resource-aware balancer prefers llama-server, so only its scraped load can turn traffic away.
SLOW_SIM = {"ttft_ms": 150, "tokens_per_second": 200, "slots": 8}


def _client(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=gateway.url + "/v1", api_key=gateway.admin_key, max_retries=0, timeout=30
    )


def _deployments(llama_server: str, sim: Sim) -> list[dict[str, Any]]:
    sims = [
        {"url": url, "model": MODEL_ALIAS, "input_cost_per_1k": 1.0} for url in sim.urls.values()
    ]
    return [{"url": llama_server, "model": MODEL_ALIAS}, *sims]


def _llama_name(model: str, llama_server: str) -> str:
    return f"{model}@{urlsplit(llama_server).netloc}"


def _status(gateway: Gateway) -> dict[str, Any]:
    request = urllib.request.Request(
        gateway.url + "/v1/cluster/status",
        headers={"authorization": f"Bearer {gateway.admin_key}"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        body: dict[str, Any] = json.loads(response.read())
    return body


def _metric(gateway: Gateway, name: str, **labels: str) -> float | None:
    request = urllib.request.Request(
        gateway.url + "/metrics", headers={"authorization": f"Bearer {gateway.admin_key}"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return None


def _worker(gateway: Gateway, name: str) -> dict[str, Any]:
    [worker] = [w for w in _status(gateway)["workers"] if w["id"] == name]
    return worker


def _wait_for(what: str, check: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


def _ask(client: openai.OpenAI, model: str, i: int) -> str:
    """One request of a mix (chat, streamed chat, completion); the deployment that served it."""
    headers = {"X-Session-ID": f"session-{i}"}  # read by consistent_hash only
    messages: list[Any] = [{"role": "user", "content": f"Request {i}: say something."}]
    if i % 3 == 0:
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=messages, max_tokens=4, stream=True, extra_headers=headers
        )
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    elif i % 3 == 1:
        raw = client.completions.with_raw_response.create(
            model=model, prompt=f"Request {i}:", max_tokens=4, extra_headers=headers
        )
        text = raw.parse().choices[0].text
    else:
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=messages, max_tokens=4, extra_headers=headers
        )
        text = raw.parse().choices[0].message.content or ""
    assert text, f"request {i} to {model}: no text"
    return raw.headers["x-swarmgate-deployment"]


@pytest.fixture(scope="module")
def processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    started = Processes(tmp_path_factory.mktemp("llama-fleet"))
    yield started
    started.stop_all()


@pytest.fixture(scope="module")
def every_strategy(processes: Processes, llama_server: str) -> Gateway:
    """One gateway; one model per strategy (and one naming none), each over llama-server and
    two simulated servers, which are dearer (for ``cost``)."""
    sim = processes.sim({MODEL_ALIAS: QUICK_SIM}, replicas=2)
    deployments = _deployments(llama_server, sim)
    models: dict[str, Any] = {s: {"balancer": s, "deployments": deployments} for s in STRATEGIES}
    models[DEFAULT] = {"deployments": deployments}
    return processes.gateway({"scrape": {"interval": 1.0}, "models": models})


@pytest.mark.parametrize("strategy", [*STRATEGIES, DEFAULT])
def test_every_balancer_sends_llama_server_its_share_through_the_sdk(
    every_strategy: Gateway, llama_server: str, strategy: str
) -> None:
    client = _client(every_strategy)
    with ThreadPoolExecutor(4) as pool:
        served = Counter(pool.map(lambda i: _ask(client, strategy, i), range(REQUESTS)))

    llama = _llama_name(strategy, llama_server)
    assert sum(served.values()) == REQUESTS
    assert served[llama] > 0, served
    if strategy == "cost":  # llama-server is the free one, and never full here
        assert served[llama] == REQUESTS, served
    model = _status(every_strategy)["models"][strategy]
    assert model["balancer"] == ("resource_aware" if strategy == DEFAULT else strategy)
    # Its exposition was read: the real server's names are understood.
    _wait_for(
        f"{llama}'s scraped figures in /v1/cluster/status",
        lambda: "queue_running" in _worker(every_strategy, llama),
    )
    worker = _worker(every_strategy, llama)
    assert worker["queue_waiting"] >= 0 and worker["queue_running"] >= 0
    assert "kv_cache_usage" not in worker  # this llama.cpp build exports no KV gauge
    # And in the gateway's own metrics.
    labels = {"model": strategy, "deployment": llama}
    assert _metric(every_strategy, "gateway_deployment_requests_running", **labels) is not None
    assert _metric(every_strategy, "gateway_deployment_requests_waiting", **labels) is not None
    assert _metric(every_strategy, "gateway_deployment_kv_cache_usage", **labels) is None


class Hammer:
    """Another client of llama-server's, not the gateway's: threads sending it long requests
    directly until stopped, so that both of its slots are busy and more requests wait."""

    def __init__(self, url: str, threads: int = 8) -> None:
        self.client = openai.OpenAI(base_url=url + "/v1", api_key="-", max_retries=0, timeout=30)
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run) for _ in range(threads)]
        self.failures: list[BaseException] = []

    def _run(self) -> None:
        messages: list[Any] = [{"role": "user", "content": "Go on."}]
        while not self.stopping.is_set():
            try:
                self.client.chat.completions.create(
                    model=MODEL_ALIAS, messages=messages, max_tokens=200
                )
            except openai.OpenAIError as exc:
                self.failures.append(exc)
                return

    def __enter__(self) -> Hammer:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(30)


def test_resource_aware_by_default_turns_traffic_away_from_a_llama_server_busy_elsewhere(
    processes: Processes, llama_server: str
) -> None:
    sim = processes.sim({MODEL_ALIAS: SLOW_SIM}, replicas=2)
    # No balancer named, scraping on, every deployment scraped: resource-aware.
    config = {
        "scrape": {"interval": 0.2, "stale_after": 5.0},
        "models": {"m": {"deployments": _deployments(llama_server, sim)}},
    }
    gateway = processes.gateway(config)
    assert _status(gateway)["models"]["m"]["balancer"] == "resource_aware"
    client = _client(gateway)
    llama = _llama_name("m", llama_server)

    def one_by_one(n: int) -> Counter[str]:
        return Counter(_ask(client, "m", 3 * i + 2) for i in range(n))  # plain chat, in turn

    # Idle: llama-server is the fastest, and takes most of the requests.
    idle = one_by_one(12)
    assert idle[llama] >= 6, idle

    with Hammer(llama_server) as hammer:
        _wait_for(
            "llama-server's queue in its scraped figures",
            lambda: _worker(gateway, llama).get("queue_waiting", 0) >= 2,
        )
        assert _worker(gateway, llama)["queue_running"] >= 1
        busy = one_by_one(12)
        still = _worker(gateway, llama)
        waiting = _metric(
            gateway, "gateway_deployment_requests_waiting", model="m", deployment=llama
        )
    assert hammer.failures == []
    # The gateway had nothing in flight there, and llama-server was the fastest: only the
    # scraped queue can have turned every request away.
    assert busy[llama] == 0, busy
    assert still["queue_waiting"] >= 1, still
    assert waiting is not None and waiting >= 1

    _wait_for(
        "llama-server idle again in its scraped figures",
        lambda: _worker(gateway, llama).get("queue_running", 1) == 0,
    )
    after = one_by_one(12)
    assert after[llama] >= 6, after
