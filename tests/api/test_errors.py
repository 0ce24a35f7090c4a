"""Every failure reaches the client as the right OpenAI SDK exception, in OpenAI's error schema
with a request id; bad input and broken upstreams never produce a 500 or a traceback.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import openai
import pytest
from openai import OpenAI

from tests.api.e2e import (
    FAST,
    MESSAGES,
    Processes,
    assert_clean_log,
    assert_openai_error,
    assert_sdk_error,
    wait_until_full,
)
from tests.plugins.processes import Gateway, free_port

MAX_BODY = 4096
MODELS = ("busy", "chat", "dead", "embed", "half", "hasty")


@pytest.fixture(scope="module")
def gw(procs: Processes) -> Iterator[Gateway]:
    sim = procs.sim({"chat": FAST, "embed": {**FAST, "embedding_dim": 16}})
    url = sim.url
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    # A non-streamed answer's first byte is the whole answer: only `total` bounds it.
    quick = {"first_byte": 0.5, "idle": 5, "total": 1.0}
    gateway = procs.gateway(
        {
            "server": {"max_body_bytes": MAX_BODY},
            "models": {
                "chat": {"deployments": [{"url": url}]},
                "embed": {"type": "embedding", "deployments": [{"url": url}]},
                "hasty": {"deployments": [{"url": url, "model": "chat", "timeouts": quick}]},
                "dead": {"deployments": [{"url": closed}]},
                "half": {
                    "deployments": [
                        {"url": closed, "model": "chat", "name": "half-dead"},
                        {"url": url, "model": "chat", "name": "half-alive"},
                    ]
                },
                "busy": {
                    "deployments": [
                        {
                            "url": url,
                            "model": "chat",
                            "max_concurrent": 1,
                            "timeouts": {"first_byte": 1.5, "total": 1.5},
                        }
                    ]
                },
            },
        }
    )
    yield gateway
    assert_clean_log(gateway)


@pytest.fixture(scope="module")
def client(gw: Gateway) -> Iterator[OpenAI]:
    with OpenAI(base_url=gw.url + "/v1", api_key=gw.admin_key, max_retries=0) as c:
        yield c


@pytest.fixture
async def http(gw: Gateway) -> AsyncIterator[aiohttp.ClientSession]:
    headers = {"Authorization": f"Bearer {gw.admin_key}"}
    async with aiohttp.ClientSession(gw.url, headers=headers) as session:
        yield session


@pytest.fixture(autouse=True)
def _never_a_traceback(gw: Gateway) -> Iterator[None]:
    yield
    assert_clean_log(gw)


def _chat(client: OpenAI, fail: str | None = None, **kwargs: Any) -> Any:
    args: dict[str, Any] = {"model": "chat", "messages": MESSAGES, "max_tokens": 3, **kwargs}
    if fail is not None:
        args["extra_headers"] = {"X-Sim-Fail": fail}
    return client.chat.completions.create(**args)


@pytest.mark.parametrize(
    "body",
    [b'{"model": "chat", "messages": [', b"", b"[1, 2]", b"\xff\xfe", b'"just a string"'],
    ids=["truncated", "empty", "array", "not-utf8", "string"],
)
async def test_malformed_json_is_a_400(http: aiohttp.ClientSession, body: bytes) -> None:
    headers = {"Content-Type": "application/json", "X-Request-ID": "bad-json-1"}
    async with http.post("/v1/chat/completions", data=body, headers=headers) as r:
        assert r.status == 400
        assert r.headers["x-request-id"] == "bad-json-1"
        payload = await r.json()
    assert_openai_error(payload, "invalid_request_error", "bad-json-1")
    assert payload["error"]["code"] == "invalid_json"


@pytest.mark.parametrize(
    ("override", "param"),
    [
        ({"stream": "yes"}, "stream"),
        ({"model": 5}, "model"),
        ({"messages": "hello"}, "messages"),
        ({"stream_options": ["include_usage"]}, "stream_options"),
        ({"stream_options": {"include_usage": "x"}}, "stream_options.include_usage"),
        (
            {"stream": True, "stream_options": {"include_usage": "x"}},
            "stream_options.include_usage",
        ),
    ],
)
def test_wrong_types_are_bad_requests(client: OpenAI, override: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        _chat(client, extra_body=override)
    assert_sdk_error(exc.value, 400, "invalid_request_error", None)
    assert exc.value.param == param


def test_missing_required_fields_are_bad_requests(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.embeddings.create(model="embed", input=5)  # type: ignore[arg-type]
    assert exc.value.param == "input"
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model="chat", prompt=None)
    assert exc.value.param == "prompt"


def test_a_model_of_the_wrong_type_is_a_bad_request(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.embeddings.create(model="chat", input="hi")
    assert_sdk_error(exc.value, 400, "invalid_request_error", None)
    assert "embedding" in exc.value.message or "chat" in exc.value.message


def test_an_unknown_model_is_not_found_and_lists_the_models(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        _chat(client, model="gpt-17")
    assert_sdk_error(exc.value, 404, "invalid_request_error", "model_not_found")
    assert exc.value.param == "model"
    assert "gpt-17" in exc.value.message
    for name in MODELS:
        assert name in exc.value.message


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/v1/chat/completions", "POST"),
        ("PUT", "/v1/embeddings", "POST"),
        ("POST", "/v1/models", "GET"),
        ("DELETE", "/health", "GET"),
    ],
)
async def test_a_wrong_method_is_a_405(
    http: aiohttp.ClientSession, method: str, path: str, allow: str
) -> None:
    async with http.request(method, path) as r:
        assert r.status == 405
        assert r.headers["allow"] == allow
        assert_openai_error(await r.json(), "invalid_request_error", r.headers["x-request-id"])


async def test_a_405_echoes_the_client_request_id(http: aiohttp.ClientSession) -> None:
    async with http.get("/v1/chat/completions", headers={"X-Request-ID": "mine-405"}) as r:
        assert r.status == 405
        assert r.headers["x-request-id"] == "mine-405"


async def test_an_unknown_route_is_a_404_in_openai_schema(http: aiohttp.ClientSession) -> None:
    async with http.post("/v1/no/such/thing", json={}, headers={"X-Request-ID": "mine-404"}) as r:
        assert r.status == 404
        assert r.headers["x-request-id"] == "mine-404"
        assert_openai_error(await r.json(), "invalid_request_error", "mine-404")


def test_a_wrong_api_key_is_a_401(gw: Gateway) -> None:
    wrong_key = "sk-sg-" + "0" * 64
    with (
        OpenAI(base_url=gw.url + "/v1", api_key=wrong_key, max_retries=0) as wrong,
        pytest.raises(openai.AuthenticationError) as exc,
    ):
        wrong.chat.completions.create(model="chat", messages=MESSAGES)
    assert_sdk_error(exc.value, 401, "authentication_error", "invalid_api_key")


def test_a_body_over_the_limit_is_a_413(client: OpenAI) -> None:
    big = [{"role": "user", "content": "x" * (MAX_BODY + 10)}]
    with pytest.raises(openai.APIStatusError) as exc:
        _chat(client, messages=big)
    assert_sdk_error(exc.value, 413, "invalid_request_error", "payload_too_large")


async def test_a_chunked_body_over_the_limit_is_a_413(http: aiohttp.ClientSession) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"model": "chat", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}]}'

    async with http.post(
        "/v1/chat/completions", data=chunks(), headers={"Content-Type": "application/json"}
    ) as r:
        assert r.status == 413
        assert_openai_error(await r.json(), "invalid_request_error")


def test_upstream_garbage_is_a_502(client: OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as exc:
        _chat(client, fail="garbage")
    assert_sdk_error(exc.value, 502, "api_error", "bad_gateway")


def test_upstream_garbage_on_a_stream_is_a_502(client: OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as exc:
        list(_chat(client, fail="garbage", stream=True))
    assert_sdk_error(exc.value, 502, "api_error", "bad_gateway")


@pytest.mark.parametrize("fail", ["disconnect", "reset:0"])
def test_an_upstream_that_drops_the_connection_is_a_502(client: OpenAI, fail: str) -> None:
    with pytest.raises(openai.InternalServerError) as exc:
        _chat(client, fail=fail)
    assert_sdk_error(exc.value, 502, "api_error", "bad_gateway")


def test_a_dead_backend_is_a_502(client: OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as exc:
        _chat(client, model="dead")
    assert_sdk_error(exc.value, 502, "api_error", "bad_gateway")
    assert "could not reach" in exc.value.message
    with pytest.raises(openai.InternalServerError) as exc:
        list(_chat(client, model="dead", stream=True))
    assert_sdk_error(exc.value, 502, "api_error", "bad_gateway")


def test_a_failed_request_leaves_one_log_line(gw: Gateway, client: OpenAI) -> None:
    rid = f"log-line-{time.monotonic_ns()}"
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(
            model="dead", messages=MESSAGES, extra_headers={"x-request-id": rid}
        )
    deadline = time.monotonic() + 5
    while not (lines := [ln for ln in gw.output().splitlines() if f"request_id={rid}" in ln]):
        assert time.monotonic() < deadline, gw.output()
        time.sleep(0.05)
    time.sleep(0.1)
    lines = [ln for ln in gw.output().splitlines() if f"request_id={rid}" in ln]
    assert len(lines) == 1, lines
    for part in (
        "WARNING",
        "route=chat",
        "model=dead",
        "deployment=dead@127.0.0.1:",
        "outcome=connect",
        "status=502",
        "latency_ms=",
    ):
        assert part in lines[0], lines[0]


def test_a_dead_backend_is_retried_on_another_deployment(client: OpenAI) -> None:
    for stream in (False, False, True, True):
        raw = client.chat.completions.with_raw_response.create(
            model="half", messages=MESSAGES, max_tokens=2, stream=stream
        )
        assert raw.headers["x-swarmgate-deployment"] == "half-alive"
        answer = raw.parse()
        if isinstance(answer, openai.Stream):
            assert list(answer)
        else:
            assert answer.choices[0].message.content


def test_an_upstream_hang_is_a_504_within_the_total_bound(client: OpenAI) -> None:
    # Not streamed: the answer's first byte comes only when it is complete, so the total
    # bound (1 s here), not the time-to-first-token bound (0.5 s), applies.
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as exc:
        _chat(client, model="hasty", fail="hang")
    assert 0.9 < time.monotonic() - started < 4.0
    assert_sdk_error(exc.value, 504, "api_error", "upstream_timeout")
    assert "total timeout" in exc.value.message


def test_a_slow_but_timely_upstream_is_fine(client: OpenAI) -> None:
    out = _chat(client, model="hasty", fail="slow:200")
    assert out.choices[0].message.content


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, openai.BadRequestError),
        (404, openai.NotFoundError),
        (422, openai.UnprocessableEntityError),
        (429, openai.RateLimitError),
    ],
)
def test_an_upstream_4xx_passes_through_unchanged(
    client: OpenAI, status: int, error: type[openai.APIStatusError]
) -> None:
    with pytest.raises(error) as exc:
        _chat(client, fail=f"error:{status}")
    assert exc.value.status_code == status
    assert exc.value.body == {
        "message": f"simulated error {status}",
        "type": "invalid_request_error",
        "param": None,
        "code": "simulated_error",
    }
    assert exc.value.request_id  # the gateway's request id still rides in the header


@pytest.mark.parametrize("status", [401, 403])
def test_an_upstream_refusing_the_gateways_credential_is_a_502(client: OpenAI, status: int) -> None:
    # The upstream's 401/403 is about the deployment key the gateway sent, not the client's key:
    # passing it through would tell the client its own key is wrong.
    with pytest.raises(openai.InternalServerError) as exc:
        _chat(client, fail=f"error:{status}")
    assert_sdk_error(exc.value, 502, "api_error", "bad_gateway")
    assert "rejected the gateway's credentials" in exc.value.message


def test_an_upstream_429_keeps_its_retry_after(client: OpenAI) -> None:
    raw = client.chat.completions.with_raw_response
    with pytest.raises(openai.RateLimitError) as exc:
        raw.create(model="chat", messages=MESSAGES, extra_headers={"X-Sim-Fail": "error:429"})
    assert exc.value.response.headers.get("retry-after") == "1"


@pytest.mark.parametrize("status", [500, 502, 503])
def test_an_upstream_5xx_is_a_502(client: OpenAI, status: int) -> None:
    with pytest.raises(openai.InternalServerError) as exc:
        _chat(client, fail=f"error:{status}")
    assert_sdk_error(exc.value, 502, "api_error", "bad_gateway")
    assert f"HTTP {status}" in exc.value.message
    assert f"simulated error {status}" in exc.value.message


async def test_no_free_deployment_is_a_503(gw: Gateway) -> None:
    async with openai.AsyncOpenAI(
        base_url=gw.url + "/v1", api_key=gw.admin_key, max_retries=0
    ) as aclient:
        hanging = asyncio.create_task(
            aclient.chat.completions.create(
                model="busy", messages=MESSAGES, extra_headers={"X-Sim-Fail": "hang"}
            )
        )
        await wait_until_full(gw.url, "busy")  # the hanging request holds the only slot
        with pytest.raises(openai.InternalServerError) as exc:
            await aclient.chat.completions.create(model="busy", messages=MESSAGES)
        assert_sdk_error(exc.value, 503, "api_error", "no_deployment_available")
        with pytest.raises(openai.InternalServerError) as timed_out:
            await hanging
        assert timed_out.value.status_code == 504
        # The slot is free again.
        out = await aclient.chat.completions.create(model="busy", messages=MESSAGES, max_tokens=1)
        assert out.choices[0].message.content
