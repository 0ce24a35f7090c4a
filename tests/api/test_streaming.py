"""Streaming through the gateway with the OpenAI SDK: incremental delivery, usage chunks, and
failures after the first byte, which must end the stream with a well-formed SSE error event.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from openai import AsyncOpenAI, OpenAI

from tests.api.e2e import (
    FAST,
    MESSAGES,
    REQUEST_ID,
    Processes,
    assert_clean_log,
    assert_sdk_error,
)
from tests.plugins.processes import Gateway

SLOW_TPS = 25  # tokens per second of the "slow" model: 15 tokens take 0.6 s


@pytest.fixture(scope="module")
def gw(procs: Processes) -> Iterator[Gateway]:
    sim = procs.sim(
        {
            "chat": FAST,
            "slow": {"ttft_ms": 5, "tokens_per_second": SLOW_TPS},
            # One token every 0.5 s: longer than the gateway's idle bound for it.
            "drip": {"ttft_ms": 5, "tokens_per_second": 2},
        }
    )
    url = sim.url
    quick = {"first_byte": 0.5, "idle": 5, "total": 30}
    gateway = procs.gateway(
        {
            "models": {
                "chat": {"deployments": [{"url": url}]},
                "slow": {"deployments": [{"url": url}]},
                "drip": {
                    "deployments": [
                        {"url": url, "timeouts": {"first_byte": 0.6, "idle": 0.25, "total": 30}}
                    ]
                },
                "drip-late": {
                    "deployments": [
                        {
                            "url": url,
                            "model": "drip",
                            "timeouts": {"first_byte": 5, "idle": 0.25, "total": 30},
                        }
                    ]
                },
                "hasty": {"deployments": [{"url": url, "model": "chat", "timeouts": quick}]},
            }
        }
    )
    yield gateway
    assert_clean_log(gateway)


@pytest.fixture(scope="module")
def client(gw: Gateway) -> Iterator[OpenAI]:
    with OpenAI(base_url=gw.url + "/v1", api_key=gw.admin_key, max_retries=0) as c:
        yield c


@pytest.fixture
async def aclient(gw: Gateway) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=gw.url + "/v1", api_key=gw.admin_key, max_retries=0) as c:
        yield c


def _arrivals(stream: Any) -> tuple[list[float], str]:
    start = time.monotonic()
    times, text = [], []
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            times.append(time.monotonic() - start)
            text.append(chunk.choices[0].delta.content)
    return times, "".join(text)


def test_chunks_arrive_as_they_are_generated(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model="slow", messages=MESSAGES, max_tokens=15, stream=True
    )
    times, text = _arrivals(stream)
    assert len(times) == 15 and text
    generation = 14 / SLOW_TPS  # from the first token to the last
    assert times[-1] - times[0] >= 0.8 * generation
    # The first token reached the client long before the last one was generated.
    assert times[0] < times[-1] - 0.5 * generation
    # And the tokens came spread out, not in one buffered burst at the end.
    assert len({round(t, 2) for t in times}) >= 8


async def test_async_chunks_arrive_incrementally(aclient: AsyncOpenAI) -> None:
    stream = await aclient.chat.completions.create(
        model="slow", messages=MESSAGES, max_tokens=10, stream=True
    )
    start = time.monotonic()
    times = [time.monotonic() - start async for c in stream if c.choices and c.choices[0].delta]
    assert times[-1] - times[1] >= 0.8 * 8 / SLOW_TPS


def test_stream_without_include_usage_has_no_usage_chunk(client: OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="chat", messages=MESSAGES, max_tokens=4, stream=True
    )
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.headers["x-swarmgate-model"] == "chat"
    assert REQUEST_ID.match(raw.headers["x-request-id"])
    chunks = list(raw.parse())
    assert all(c.choices for c in chunks), "a usage-only chunk the client did not ask for"
    assert all(c.usage is None for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "length"
    assert sum(1 for c in chunks if c.choices[0].delta.content) == 4


async def test_stream_with_include_usage_ends_with_a_usage_chunk(aclient: AsyncOpenAI) -> None:
    stream = await aclient.chat.completions.create(
        model="chat",
        messages=MESSAGES,
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.completion_tokens == 4
    assert last.usage.prompt_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])


def test_streamed_text_equals_the_unary_text(client: OpenAI) -> None:
    args: dict[str, Any] = {"model": "chat", "messages": MESSAGES, "max_tokens": 9, "seed": 11}
    whole = client.chat.completions.create(**args).choices[0].message.content
    _, streamed = _arrivals(client.chat.completions.create(**args, stream=True))
    assert streamed == whole


def test_mid_stream_reset_raises_after_some_chunks(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model="slow",
        messages=MESSAGES,
        max_tokens=10,
        stream=True,
        extra_headers={"X-Sim-Fail": "reset:3"},
    )
    received = []
    with pytest.raises(openai.APIError) as exc:
        for chunk in stream:
            received.append(chunk)
    assert received, "the failure came before the first chunk"
    assert len(received) < 10
    assert not isinstance(exc.value, openai.APIStatusError)  # the status was already 200
    body = exc.value.body
    assert isinstance(body, dict)
    assert body["type"] == "api_error" and body["code"] == "bad_gateway"
    assert REQUEST_ID.match(body["request_id"])


async def _events(gw: Gateway, body: dict[str, Any], headers: dict[str, str]) -> list[bytes]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            gw.url + "/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {gw.admin_key}", **headers},
        ) as r,
    ):
        assert r.status == 200
        raw = await r.read()
    assert raw.endswith(b"\n\n"), raw[-200:]
    events = raw.split(b"\n\n")[:-1]
    assert all(e.startswith(b"data: ") for e in events), events
    return [e.removeprefix(b"data: ") for e in events]


async def test_reset_ends_the_stream_with_one_wellformed_error_event(gw: Gateway) -> None:
    body = {"model": "slow", "messages": MESSAGES, "max_tokens": 10, "stream": True}
    events = await _events(gw, body, {"X-Sim-Fail": "reset:3", "X-Request-ID": "reset-me"})
    assert b"[DONE]" not in events
    *chunks, last = events
    assert chunks and all("choices" in orjson.loads(c) for c in chunks)
    error = orjson.loads(last)["error"]
    assert error["code"] == "bad_gateway"
    assert error["request_id"] == "reset-me"
    assert error["message"]


async def test_idle_timeout_mid_stream_ends_with_an_error_event(gw: Gateway) -> None:
    body = {"model": "drip", "messages": MESSAGES, "max_tokens": 5, "stream": True}
    started = time.monotonic()
    events = await _events(gw, body, {})
    elapsed = time.monotonic() - started
    error = orjson.loads(events[-1])["error"]
    assert error["code"] == "upstream_timeout", error
    assert "idle" in error["message"]
    assert any(b'"content"' in e for e in events[:-1])
    assert elapsed < 1.5  # the idle bound (0.25 s), not the stream's 2.5 s


async def test_idle_timeout_applies_before_the_first_byte_deadline_has_passed(
    gw: Gateway,
) -> None:
    body = {"model": "drip-late", "messages": MESSAGES, "max_tokens": 5, "stream": True}
    started = time.monotonic()
    events = await _events(gw, body, {})
    assert time.monotonic() - started < 3.0
    assert b"upstream_timeout" in events[-1]


async def test_async_sdk_sees_the_idle_timeout_as_an_api_error(aclient: AsyncOpenAI) -> None:
    stream = await aclient.chat.completions.create(
        model="drip", messages=MESSAGES, max_tokens=5, stream=True
    )
    received = []
    with pytest.raises(openai.APIError) as exc:
        async for chunk in stream:
            received.append(chunk)
    assert received
    assert exc.value.code == "upstream_timeout"


def test_a_hang_before_the_first_byte_is_a_504(client: OpenAI) -> None:
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as exc:
        client.chat.completions.create(
            model="hasty",
            messages=MESSAGES,
            stream=True,
            extra_headers={"X-Sim-Fail": "hang"},
        )
    assert time.monotonic() - started < 3.0
    assert_sdk_error(exc.value, 504, "api_error", "upstream_timeout")


def test_an_upstream_4xx_on_a_stream_passes_through(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(
            model="chat", messages=MESSAGES, stream=True, extra_headers={"X-Sim-Fail": "error:400"}
        )
    assert exc.value.body == {
        "message": "simulated error 400",
        "type": "invalid_request_error",
        "param": None,
        "code": "simulated_error",
    }


def test_an_upstream_5xx_on_a_stream_is_a_502(client: OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as exc:
        client.chat.completions.create(
            model="chat", messages=MESSAGES, stream=True, extra_headers={"X-Sim-Fail": "error:500"}
        )
    assert_sdk_error(exc.value, 502, "api_error", "bad_gateway")
    assert "HTTP 500" in exc.value.message


async def test_a_client_leaving_mid_stream_frees_the_deployment_at_once(gw: Gateway) -> None:
    """uvicorn's send() does not fail once the client has gone: the gateway must notice the
    disconnect itself and stop reading (and so stop the upstream's generation)."""

    async def in_flight(http: aiohttp.ClientSession) -> float:
        async with http.get(gw.url + "/metrics") as r:
            for line in (await r.text()).splitlines():
                if line.startswith("gateway_requests_in_flight "):
                    return float(line.split()[1])
        raise AssertionError("no in-flight gauge")

    async with aiohttp.ClientSession() as http:
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as leaving:
            response = await leaving.post(
                gw.url + "/v1/chat/completions",
                headers={"Authorization": f"Bearer {gw.admin_key}"},
                json={"model": "slow", "messages": MESSAGES, "stream": True, "max_tokens": 1000},
            )
            assert response.status == 200
            await response.content.readany()  # the stream is running: 1,000 tokens take 40 s
            assert await in_flight(http) == 1
            response.close()  # the client goes away
        deadline = time.monotonic() + 3
        while await in_flight(http) != 0:
            assert time.monotonic() < deadline, "the abandoned stream is still being relayed"
            await asyncio.sleep(0.05)
