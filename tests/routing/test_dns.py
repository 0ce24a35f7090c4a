"""DNS discovery against a real DNS server (Debian's dnsmasq) whose records change during the
test: the resolver seam, and real gateways that follow A/AAAA and SRV records, keep the last
answer through an outage of the server, and never drop a stream in flight on a deployment
that goes away."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from swarmgate.errors import DiscoveryFailed
from swarmgate.routing.dns import DnsResolver
from tests.auth.e2e import call, wait_for
from tests.plugins.dnsmasq import Dnsmasq
from tests.plugins.processes import SWARMGATE, Gateway, Process, Sim, free_port, spawn, wait_healthy

FAST: dict[str, Any] = {"ttft_ms": 1, "tokens_per_second": 2000, "max_tokens_default": 4}
# About 1.6 s for 40 tokens: a stream still running while the records change.
SLOW: dict[str, Any] = {"ttft_ms": 50, "tokens_per_second": 25, "max_tokens_default": 4}
INTERVAL = 0.2  # seconds between two resolutions


async def test_the_resolver_reads_dnsmasq_records_and_their_changes(dnsmasq: Dnsmasq) -> None:
    dnsmasq.set_addresses({"llm.test": ["127.0.0.2", "127.0.0.3", "::1"], "a.test": ["10.1.1.1"]})
    resolver = DnsResolver([("127.0.0.1", dnsmasq.port)], timeout=1.0)
    assert await resolver.addresses("llm.test") == ("127.0.0.2", "127.0.0.3", "::1")
    dnsmasq.set_addresses({"llm.test": ["127.0.0.4"]})
    assert await resolver.addresses("llm.test") == ("127.0.0.4",)  # no cache in between
    with pytest.raises(DiscoveryFailed, match=r"^a\.test: "):
        await resolver.addresses("a.test")
    dnsmasq.set_services(
        [("_http._tcp.llm.test", "b.test", 8002), ("_http._tcp.llm.test", "a.test", 8001)]
    )
    assert await resolver.services("_http._tcp.llm.test") == (("a.test", 8001), ("b.test", 8002))
    dnsmasq.stop()
    with pytest.raises(DiscoveryFailed, match="no answer within 1s"):
        await resolver.addresses("llm.test")


@pytest.fixture
def loopback_sims(tmp_path: Path) -> Iterator[Callable[[list[str]], tuple[int, Process]]]:
    """Simulated servers of model ``m`` on the same port of several loopback addresses (as
    the pods behind a headless service): what A records name."""
    started: list[Process] = []

    def start(hosts: list[str]) -> tuple[int, Process]:
        port = free_port()
        servers = [
            {"name": f"pod-{h}", "host": h, "port": port, "models": {"m": SLOW}} for h in hosts
        ]
        profile = tmp_path / f"pods-{port}.yaml"
        profile.write_text(yaml.safe_dump({"servers": servers}))
        log = tmp_path / f"pods-{port}.log"
        proc = Process(spawn([*SWARMGATE, "sim", "--config", str(profile)], log), log, "")
        started.append(proc)
        for h in hosts:
            wait_healthy(Process(proc.proc, log, f"http://{h}:{port}"))
        return port, proc

    yield start
    for proc in started:
        proc.stop()


def workers(gw: Gateway) -> set[str]:
    """The ids of the gateway's workers, every one of them found in DNS."""
    reply = call(gw.url + "/api/v1/workers", key=gw.admin_key)
    assert reply.status == 200, reply.text
    assert {w["source"] for w in reply.body["data"]} <= {"dns"}, reply.body
    return {w["id"] for w in reply.body["data"]}


def gateway_config(discover: dict[str, Any], dnsmasq: Dnsmasq) -> dict[str, Any]:
    return {
        "models": {"m": {"deployments": [{"discover": {**discover, "interval": INTERVAL}}]}},
        "discovery": {"nameservers": [dnsmasq.nameserver], "timeout": 0.5},
        "limits": {"enabled": False},
    }


def test_a_gateway_follows_a_records_and_keeps_a_stream_on_a_pod_that_went_away(
    dnsmasq: Dnsmasq,
    loopback_sims: Callable[[list[str]], tuple[int, Process]],
    gateway_factory: Callable[..., Gateway],
) -> None:
    port, _ = loopback_sims(["127.0.0.2", "127.0.0.3", "127.0.0.4"])
    dnsmasq.set_addresses({"llm.test": ["127.0.0.2"]})
    gw = gateway_factory(gateway_config({"dns": "llm.test", "port": port}, dnsmasq))
    assert workers(gw) == {f"m@127.0.0.2:{port}"}  # resolved before the first request
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.admin_key, max_retries=0)

    # A stream in flight on the one pod, while DNS moves the service to two others.
    raw = client.chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True, max_tokens=40
    )
    assert raw.headers["x-swarmgate-deployment"] == f"m@127.0.0.2:{port}"
    stream = raw.parse()
    first = next(iter(stream))
    dnsmasq.set_addresses({"llm.test": ["127.0.0.3", "127.0.0.4"]})
    wanted = {f"m@127.0.0.3:{port}", f"m@127.0.0.4:{port}"}
    wait_for(lambda: workers(gw) == wanted, 5, what="the new A records followed")
    rest = list(stream)
    assert first.choices and rest[-1].choices[0].finish_reason == "length"
    tokens = [c for c in [first, *rest] if c.choices and c.choices[0].delta.content]
    assert len(tokens) >= 30, tokens  # the whole answer, not cut off

    served = set()
    for _ in range(8):
        reply = client.chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
        served.add(reply.headers["x-swarmgate-deployment"])
    assert served == wanted

    # The DNS server goes away: the last answer stays, and the outage is logged once.
    dnsmasq.stop()
    time.sleep(3.0)  # two rounds at least: each failed lookup waits out its 0.5 s timeout twice
    assert workers(gw) == wanted
    assert gw.output().count("cannot be resolved") == 1, gw.output()
    assert 'gateway_discovery_lookups_total{model="m",result="failed"}' in (
        call(gw.url + "/metrics").text
    )
    dnsmasq.set_addresses({"llm.test": ["127.0.0.2"]})
    dnsmasq.start()
    wait_for(lambda: workers(gw) == {f"m@127.0.0.2:{port}"}, 5, what="back after the outage")
    assert "resolves again" in gw.output()


def test_a_gateway_follows_srv_records(
    dnsmasq: Dnsmasq, sim_factory: Callable[..., Sim], gateway_factory: Callable[..., Gateway]
) -> None:
    sim = sim_factory({"m": FAST}, replicas=3)
    ports = [int(u.rsplit(":", 1)[1]) for u in sim.urls.values()]
    dnsmasq.set_addresses({"pod-0.llm.test": ["127.0.0.1"], "pod-1.llm.test": ["127.0.0.1"]})
    service = "_http._tcp.llm.test"
    dnsmasq.set_services([(service, "pod-0.llm.test", ports[0])])
    gw = gateway_factory(gateway_config({"srv": service}, dnsmasq))
    assert workers(gw) == {f"m@pod-0.llm.test:{ports[0]}"}
    dnsmasq.set_services(
        [(service, "pod-0.llm.test", ports[0]), (service, "pod-1.llm.test", ports[1])]
    )
    wanted = {f"m@pod-0.llm.test:{ports[0]}", f"m@pod-1.llm.test:{ports[1]}"}
    wait_for(lambda: workers(gw) == wanted, 5, what="the new SRV record followed")
    served = set()
    for _ in range(8):
        reply = call(
            gw.url + "/v1/chat/completions",
            "POST",
            key=gw.admin_key,
            json_body={"model": "m", "messages": [{"role": "user", "content": "x"}]},
        )
        assert reply.status == 200, reply.text
        served.add(reply.headers["x-swarmgate-deployment"])
    assert served == wanted
    dnsmasq.set_services([(service, "pod-1.llm.test", ports[1])])
    wait_for(lambda: workers(gw) == {f"m@pod-1.llm.test:{ports[1]}"}, 5, what="a record removed")


def test_check_config_reports_a_bad_nameserver(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "models": {"m": {"deployments": [{"discover": {"dns": "llm", "port": 1}}]}},
                "discovery": {"nameservers": ["kube-dns"]},
            }
        )
    )
    done = subprocess.run(
        [*SWARMGATE, "check-config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "discovery.nameservers: Value error, " not in done.stderr
    assert "discovery.nameservers: 'kube-dns': a nameserver is an IP address" in done.stderr
