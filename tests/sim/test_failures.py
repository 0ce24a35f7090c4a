"""Failure injection: the X-Sim-Fail header (testing mode only) and the profile's rates."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import aiohttp
import openai
import pytest
from openai import AsyncOpenAI

from swarmgate.errors import BadRequest
from swarmgate.sim import failures
from swarmgate.sim.failures import FailurePlan
from swarmgate.sim.profile import FailureProfile
from tests.sim.helpers import StartSim

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6}
STREAM = {**CHAT, "stream": True}


def test_parse_header() -> None:
    assert failures.parse_header("error:503") == FailurePlan(error_status=503)
    assert failures.parse_header(" slow:250 , reset:2 ") == FailurePlan(slow_ms=250, reset_after=2)
    assert failures.parse_header("hang") == FailurePlan(hang=True)
    assert failures.parse_header("garbage,disconnect") == FailurePlan(garbage=True, disconnect=True)
    for bad in ("explode", "error:abc", "error:200", "slow:-1", "hang:3", "reset:x"):
        with pytest.raises(BadRequest):
            failures.parse_header(bad)


def test_draw_follows_rates_and_seed() -> None:
    profile = FailureProfile(error_rate=0.3, hang_rate=0.2, reset_rate=0.1, error_status=502)
    plans = [failures.draw(profile, random.Random(7)) for _ in range(2)]
    assert plans[0] == plans[1]
    rng = random.Random(1)
    drawn = [failures.draw(profile, rng) for _ in range(4000)]
    errors = sum(p.error_status == 502 for p in drawn) / len(drawn)
    hangs = sum(p.hang for p in drawn) / len(drawn)
    resets = sum(p.reset_after == 3 for p in drawn) / len(drawn)
    assert errors == pytest.approx(0.3, abs=0.03)
    assert hangs == pytest.approx(0.2, abs=0.03)
    assert resets == pytest.approx(0.1, abs=0.03)
    assert failures.draw(FailureProfile(), rng).is_empty


async def fail(
    http: aiohttp.ClientSession,
    url: str,
    how: str,
    body: Any = CHAT,
    path: str = "/v1/chat/completions",
) -> aiohttp.ClientResponse:
    return await http.post(url + path, json=body, headers={failures.HEADER: how})


async def test_error_status_with_openai_body(sim: StartSim, http: aiohttp.ClientSession) -> None:
    url = await sim({"m": {}})
    async with await fail(http, url, "error:503") as r:
        assert r.status == 503
        assert r.headers["Retry-After"] == "1"
        assert r.headers["X-Sim-Server"] == "sim"
        error = (await r.json())["error"]
        assert error["type"] == "api_error"
        assert error["code"] == "simulated_error"
    async with http.get(url + "/health", headers={failures.HEADER: "error:500"}) as r:
        assert r.status == 500
    async with AsyncOpenAI(
        base_url=url + "/v1",
        api_key="x",
        max_retries=0,
        default_headers={failures.HEADER: "error:429"},
    ) as client:
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(**CHAT)


async def test_header_is_ignored_without_testing(
    sim: StartSim, http: aiohttp.ClientSession
) -> None:
    url = await sim({"m": {}}, testing=False)
    for how in ("error:503", "disconnect", "garbage", "explode"):
        async with await fail(http, url, how) as r:
            assert r.status == 200, how
            assert (await r.json())["object"] == "chat.completion"


async def test_unknown_directive_is_400(sim: StartSim, http: aiohttp.ClientSession) -> None:
    url = await sim({"m": {}})
    async with await fail(http, url, "error:503,explode") as r:
        assert r.status == 400
        assert "explode" in (await r.json())["error"]["message"]


async def test_hang_lasts_until_the_client_leaves(
    sim_fleet: Any, http: aiohttp.ClientSession
) -> None:
    fleet = await sim_fleet({"servers": [{"name": "sim", "models": {"m": {"ttft_ms": 1}}}]})
    url = fleet.urls["sim"]
    with pytest.raises(asyncio.TimeoutError):
        async with http.post(
            url + "/v1/chat/completions",
            json=CHAT,
            headers={failures.HEADER: "hang"},
            timeout=aiohttp.ClientTimeout(total=0.5),
        ):
            pass
    async with http.get(url + "/health") as r:
        assert r.status == 200
    # The hung handler was cancelled when the client went away: stopping does not wait for it.
    await asyncio.sleep(0.1)
    start = time.monotonic()
    await fleet.stop()
    assert time.monotonic() - start < 1.5


@pytest.mark.parametrize("chunks", [0, 1, 3])
async def test_reset_mid_stream_after_n_chunks(
    sim: StartSim, http: aiohttp.ClientSession, chunks: int
) -> None:
    url = await sim({"m": {}})
    events = []
    with pytest.raises(aiohttp.ClientPayloadError):
        async with await fail(http, url, f"reset:{chunks}", STREAM) as r:
            assert r.status == 200
            async for line in r.content:
                if line.startswith(b"data:"):
                    events.append(line)
    assert len(events) == chunks
    assert b"[DONE]" not in b"".join(events)


async def test_reset_non_streaming_truncates_the_body(
    sim: StartSim, http: aiohttp.ClientSession
) -> None:
    url = await sim({"m": {}})
    with pytest.raises(aiohttp.ClientPayloadError):
        async with await fail(http, url, "reset:0") as r:
            await r.read()


async def test_reset_reaches_the_sdk_as_a_connection_error(sim: StartSim) -> None:
    url = await sim({"m": {}})
    async with AsyncOpenAI(
        base_url=url + "/v1",
        api_key="x",
        max_retries=0,
        default_headers={failures.HEADER: "reset:2"},
    ) as client:
        stream = await client.chat.completions.create(**STREAM)
        with pytest.raises(openai.APIError):
            async for _ in stream:
                pass


async def test_slow_delays_the_first_byte(sim: StartSim, http: aiohttp.ClientSession) -> None:
    url = await sim({"m": {}})
    start = time.monotonic()
    async with await fail(http, url, "slow:300", STREAM) as r:
        assert time.monotonic() - start >= 0.3
        assert r.status == 200
        assert (await r.read()).endswith(b"data: [DONE]\n\n")
    start = time.monotonic()
    async with await fail(http, url, "slow:200,error:502") as r:
        assert r.status == 502
        assert time.monotonic() - start >= 0.2


async def test_garbage_is_a_200_that_is_not_json(
    sim: StartSim, http: aiohttp.ClientSession
) -> None:
    url = await sim({"m": {}})
    async with await fail(http, url, "garbage") as r:
        assert r.status == 200
        with pytest.raises(ValueError):
            await r.json()


async def test_disconnect_closes_before_any_header(
    sim: StartSim, http: aiohttp.ClientSession
) -> None:
    url = await sim({"m": {}})
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await fail(http, url, "disconnect", STREAM)
    async with http.get(url + "/health") as r:
        assert r.status == 200


async def test_profile_error_rate_one_fails_every_request(
    sim: StartSim, http: aiohttp.ClientSession
) -> None:
    url = await sim({"m": {"failures": {"error_rate": 1.0, "error_status": 502}}}, testing=False)
    for _ in range(3):
        async with http.post(url + "/v1/chat/completions", json=CHAT) as r:
            assert r.status == 502
            assert (await r.json())["error"]["code"] == "simulated_error"
    async with http.get(url + "/health") as r:
        assert r.status == 200  # profile failures are for inference only


async def test_profile_reset_and_slow_first_byte(
    sim: StartSim, http: aiohttp.ClientSession
) -> None:
    profile = {"failures": {"reset_rate": 1.0, "reset_after_chunks": 2, "slow_first_byte_ms": 200}}
    url = await sim({"m": profile}, testing=False)
    events = 0
    start = time.monotonic()
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.post(url + "/v1/chat/completions", json=STREAM) as r:
            assert time.monotonic() - start >= 0.2
            async for line in r.content:
                events += line.startswith(b"data:")
    assert events == 2


async def test_profile_hang(sim: StartSim, http: aiohttp.ClientSession) -> None:
    url = await sim({"m": {"failures": {"hang_rate": 1.0}}}, testing=False)
    with pytest.raises(asyncio.TimeoutError):
        await http.post(
            url + "/v1/chat/completions", json=CHAT, timeout=aiohttp.ClientTimeout(total=0.3)
        )


async def test_profile_failures_are_reproducible_for_a_seed(
    sim: StartSim, http: aiohttp.ClientSession
) -> None:
    profile = {"m": {"failures": {"error_rate": 0.5}}}

    async def statuses(url: str) -> list[int]:
        out = []
        for _ in range(24):
            async with http.post(url + "/v1/chat/completions", json=CHAT) as r:
                out.append(r.status)
        return out

    first = await statuses(await sim(profile, seed=11))
    second = await statuses(await sim(profile, seed=11))
    other = await statuses(await sim(profile, seed=12))
    assert first == second
    assert set(first) == {200, 500}
    assert first != other
