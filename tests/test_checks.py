"""``swarmgate check``: seed 002's test list against a real gateway, and against a broken one."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

from tests.limits.test_sdk import create_key
from tests.plugins.processes import SWARMGATE, Gateway, Sim, free_port

FAST = {"ttft_ms": 2, "tokens_per_second": 5000}


def check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SWARMGATE, "check", *args], capture_output=True, text=True, timeout=120)


def verdicts(output: str) -> dict[str, str]:
    found = {}
    for line in output.splitlines()[:-1]:
        verdict, _, rest = line.partition("  ")
        found[rest.split(" (")[0]] = verdict
    return found


def test_a_healthy_gateway_passes(
    sim_factory: Callable[..., Sim], gateway_factory: Callable[..., Gateway]
) -> None:
    sim = sim_factory({"chat-a": FAST, "painter": {**FAST, "modality": "image"}}, replicas=2)
    urls = list(sim.urls.values())
    gw = gateway_factory(
        {
            "models": {
                "chat-a": {"deployments": [{"url": u} for u in urls]},
                # Not a chat model: the chat and spread checks must not call it.
                "painter": {"type": "image", "deployments": [{"url": urls[0]}]},
            }
        }
    )
    result = check("--url", gw.url, "--key", gw.admin_key, "--verbose")
    found = verdicts(result.stdout)
    assert found["health"] == "PASS", result.stdout
    for name in ("models", "chat completion", "streaming", "authentication", "load spread"):
        assert found[name] == "PASS", result.stdout
    assert "load spread" in result.stdout and "chat-a: 2 deployments" in result.stdout
    # No limits configured: said so, not failed.
    assert found["rate limiting"] == "SKIP"
    assert "no 429 after a burst" in result.stdout
    assert found["root endpoint"] == "PASS", result.stdout
    assert result.returncode == 0, result.stdout
    assert result.stdout.splitlines()[-1].startswith("8 checks: ")


def test_a_gateway_with_a_dead_deployment_fails(gateway_factory: Callable[..., Gateway]) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    gw = gateway_factory({"models": {"chat-a": {"deployments": [{"url": dead}]}}})
    result = check("--url", gw.url, "--key", gw.admin_key)
    assert result.returncode == 1
    found = verdicts(result.stdout)
    assert found["health"] == "PASS" and found["models"] == "PASS"
    assert found["chat completion"] == "FAIL" and found["streaming"] == "FAIL"
    assert "chat with chat-a answered 50" in result.stdout
    summary = result.stdout.splitlines()[-1]
    assert summary.startswith("8 checks: ") and " 0 failed" not in summary


def test_a_gateway_that_is_not_there_fails_every_check() -> None:
    result = check("--url", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert "cannot reach the gateway" in result.stdout
    assert "Traceback" not in result.stderr


def test_a_limited_key_passes_the_rate_limiting_check(
    sim_factory: Callable[..., Sim], gateway_factory: Callable[..., Gateway]
) -> None:
    sim = sim_factory({"chat-a": FAST})
    gw = gateway_factory({"models": {"chat-a": {"deployments": [{"url": sim.url}]}}})
    free = create_key(gw, "free")  # seed 001's free tier: 10 requests a minute
    result = check("--url", gw.url, "--key", free, "--verbose")
    found = verdicts(result.stdout)
    assert found["rate limiting"] == "PASS", result.stdout
    assert "with Retry-After" in result.stdout
