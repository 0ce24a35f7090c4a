"""Operations routes of a running gateway: health, readiness, model status, Prometheus metrics,
and the OpenAPI document, which must describe every route the app serves.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import fastapi.routing
import openai
import orjson
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from openai import AsyncOpenAI
from prometheus_client.parser import text_string_to_metric_families

from swarmgate import __version__
from swarmgate.api.app import Gateway as GatewayApp
from swarmgate.config import load_settings
from tests.api.e2e import (
    FAST,
    MESSAGES,
    Processes,
    assert_clean_log,
    assert_openai_error,
    wait_until_full,
)
from tests.plugins.processes import Gateway

HANG_BOUND = 1.0  # first-byte bound of the "busy" model, which the tests keep busy


@pytest.fixture(scope="module")
def gw(procs: Processes) -> Iterator[Gateway]:
    sim = procs.sim({"chat": FAST, "embed": {**FAST, "embedding_dim": 8}})
    busy = {
        "url": sim.url,
        "model": "chat",
        "name": "busy-1",
        "max_concurrent": 1,
        "timeouts": {"first_byte": HANG_BOUND, "total": HANG_BOUND},
    }
    gateway = procs.gateway(
        {
            "models": {
                "chat": {"deployments": [{"url": sim.url, "name": "chat-1"}]},
                "embed": {"type": "embedding", "deployments": [{"url": sim.url}]},
                "busy": {"deployments": [busy]},
            }
        }
    )
    yield gateway
    assert_clean_log(gateway)


@pytest.fixture
async def http(gw: Gateway) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(gw.url) as session:
        yield session


@pytest.fixture
async def aclient(gw: Gateway) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=gw.url + "/v1", api_key=gw.admin_key, max_retries=0) as c:
        yield c


async def _get(http: aiohttp.ClientSession, path: str) -> tuple[int, Any]:
    async with http.get(path) as r:
        return r.status, await r.json()


async def _metrics(http: aiohttp.ClientSession) -> dict[tuple[str, frozenset[Any]], float]:
    async with http.get("/metrics") as r:
        assert r.status == 200
        assert r.headers["content-type"].startswith("text/plain")
        text = await r.text()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(samples: dict[tuple[str, frozenset[Any]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def _hang(aclient: AsyncOpenAI) -> asyncio.Task[Any]:
    async def call() -> Any:
        with pytest.raises(openai.InternalServerError) as exc:
            await aclient.chat.completions.create(
                model="busy", messages=MESSAGES, extra_headers={"X-Sim-Fail": "hang"}
            )
        return exc.value.status_code

    return asyncio.create_task(call())


async def _models_status(http: aiohttp.ClientSession) -> dict[str, Any]:
    """/models/status (always a 200) cut down to what /health/ready says of each model."""
    status, body = await _get(http, "/models/status")
    assert status == 200
    assert {"status", "timestamp", "models"} <= body.keys()
    models = body["models"]
    for model in models.values():
        assert {"status", "healthy", "draining", "in_flight", "capacity", "workers"} <= model.keys()
    shown = ("deployments", "usable", "healthy", "down")
    cut = {m: {k: v[k] for k in shown} for m, v in models.items()}
    return {"status": body["status"], "models": cut}


async def test_health(http: aiohttp.ClientSession) -> None:
    status, body = await _get(http, "/health")
    assert (status, body["status"], body["version"]) == (200, "healthy", __version__)


async def test_readiness_counts_usable_deployments_per_model(
    http: aiohttp.ClientSession, aclient: AsyncOpenAI, gw: Gateway
) -> None:
    ready = {
        "status": "ready",
        "models": {
            "chat": {"deployments": 1, "usable": 1, "healthy": 1, "down": {}},
            "embed": {"deployments": 1, "usable": 1, "healthy": 1, "down": {}},
            "busy": {"deployments": 1, "usable": 1, "healthy": 1, "down": {}},
        },
    }
    assert await _get(http, "/health/ready") == (200, ready)
    assert await _models_status(http) == ready

    hanging = _hang(aclient)
    await wait_until_full(gw.url, "busy")
    status, body = await _get(http, "/health/ready")
    # A saturated model is reported, but the gateway stays ready: taking it out of a load
    # balancer would only push the load onto the other replicas.
    assert status == 200
    assert body["status"] == "ready"
    assert body["models"]["busy"] == {"deployments": 1, "usable": 0, "healthy": 1, "down": {}}
    assert body["models"]["chat"] == {"deployments": 1, "usable": 1, "healthy": 1, "down": {}}
    assert await _models_status(http) == body  # status is always a 200

    assert await hanging == 504
    assert await _get(http, "/health/ready") == (200, ready)


async def test_metrics_count_requests_latency_ttft_and_tokens(
    http: aiohttp.ClientSession, aclient: AsyncOpenAI
) -> None:
    before = await _metrics(http)
    unary = await aclient.chat.completions.create(model="chat", messages=MESSAGES, max_tokens=4)
    stream = await aclient.chat.completions.create(
        model="chat",
        messages=MESSAGES,
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    streamed_usage = [c.usage async for c in stream if c.usage is not None][-1]
    with pytest.raises(openai.NotFoundError):
        await aclient.chat.completions.create(model="nope", messages=MESSAGES)
    with pytest.raises(openai.InternalServerError):
        await aclient.chat.completions.create(
            model="chat", messages=MESSAGES, extra_headers={"X-Sim-Fail": "error:503"}
        )
    after = await _metrics(http)

    def delta(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    requests, chat = "gateway_requests_total", "/v1/chat/completions"
    assert delta(requests, method="POST", endpoint=chat, status="200") == 2
    assert delta(requests, method="POST", endpoint=chat, status="502") == 1
    assert delta(requests, method="POST", endpoint=chat, status="404") == 1
    assert delta("inference_requests_total", model="chat", type="chat") == 3  # 404: no model
    latency = "gateway_request_duration_seconds_count"
    assert delta(latency, endpoint=chat) == 4
    assert delta("gateway_request_duration_seconds_sum", endpoint=chat) > 0
    upstream = "gateway_upstream_duration_seconds_count"
    assert delta(upstream, model="chat", deployment="chat-1") == 3
    ttft = "gateway_time_to_first_token_seconds_count"
    assert delta(ttft, model="chat", deployment="chat-1") == 1
    assert unary.usage is not None
    tokens = "gateway_tokens_total"
    assert delta(tokens, model="chat", direction="output") == 4 + 5
    assert streamed_usage.completion_tokens == 5
    assert (
        delta(tokens, model="chat", direction="input")
        == unary.usage.prompt_tokens + streamed_usage.prompt_tokens
    )
    errors = "gateway_upstream_errors_total"
    assert delta(errors, deployment="chat-1", kind="http_503") == 1


async def test_in_flight_gauge_follows_open_requests(
    http: aiohttp.ClientSession, aclient: AsyncOpenAI, gw: Gateway
) -> None:
    assert _value(await _metrics(http), "gateway_requests_in_flight") == 0
    hanging = _hang(aclient)
    await wait_until_full(gw.url, "busy")
    assert _value(await _metrics(http), "gateway_requests_in_flight") == 1
    assert await hanging == 504
    samples = await _metrics(http)
    assert _value(samples, "gateway_requests_in_flight") == 0
    assert _value(samples, "gateway_upstream_errors_total", deployment="busy-1", kind="timeout")


def _management_routes(app: FastAPI) -> set[tuple[str, str]]:
    """(path, method) of every schema route of the management app, routers included."""
    iterate = getattr(fastapi.routing, "iter_route_contexts", None)  # FastAPI >= 0.16x
    routes: list[Any] = list(iterate(app.routes)) if iterate else list(app.routes)
    return {
        (route.path_format, method)
        for route in routes
        if isinstance(getattr(route, "original_route", route), APIRoute) and route.include_in_schema
        for method in route.methods or ()
    }


async def _documented(http: aiohttp.ClientSession) -> dict[str, dict[str, Any]]:
    status, document = await _get(http, "/openapi.json")
    assert status == 200
    assert document["openapi"].startswith("3.")
    paths: dict[str, dict[str, Any]] = document["paths"]
    for operations in paths.values():
        for operation in operations.values():
            assert operation.get("responses"), operation
    return paths


async def test_openapi_documents_every_route_the_app_serves(
    http: aiohttp.ClientSession, gw: Gateway
) -> None:
    paths = await _documented(http)
    documented = {(p, m.upper()) for p, ops in paths.items() for m in ops}
    # The same app, built in this process from the same file, says what it serves.
    env = {"SWARMGATE_AUTH__SECRET": "s" * 64, "SWARMGATE_ADMIN_KEY": gw.admin_key}
    app = GatewayApp(load_settings(gw.config_path, env))
    served = {(path, method) for path, (method, _) in app.routes.items()}
    served.add(("/v1/models/{model_id}", "GET"))  # the hot path's one prefix route
    management = _management_routes(app.management)
    assert management, "the management app serves no documented route?"
    served |= management
    assert {p for p, _ in served} >= {"/v1/chat/completions", "/metrics", "/v1/models"}
    assert served - documented == set(), "served but not documented"


# Path parameters get values that name nothing the gateway holds (TEST-NET-1 for a CIDR).
PLACEHOLDERS = {"model_id": "chat", "cidr": "192.0.2.0/24"}


async def test_every_documented_route_is_served(http: aiohttp.ClientSession, gw: Gateway) -> None:
    paths = await _documented(http)
    headers = {"Authorization": f"Bearer {gw.admin_key}"}
    for path, operations in paths.items():
        concrete = re.sub(r"\{([^}]+)\}", lambda m: PLACEHOLDERS.get(m[1], "x"), path)
        for method in operations:
            # A body that is not an object: no route with a body may act on it.
            async with http.request(method, concrete, headers=headers, json=[]) as r:
                body = await r.read()
            assert r.status != 405, (method, path, body)
            assert r.status < 500, (method, path, body)
            if r.status == 404:
                message = orjson.loads(body)["error"]["message"]
                assert not message.startswith("no route"), (method, path, message)


async def test_lifting_a_block_on_a_malformed_cidr_is_a_400(
    gateway_factory: Callable[..., Gateway],
) -> None:
    # A gateway of its own: the traceback this bug writes must not fail the module's log check.
    own = gateway_factory({"models": {"m": {"deployments": [{"url": "http://127.0.0.1:9"}]}}})
    headers = {"Authorization": f"Bearer {own.admin_key}"}
    async with (
        aiohttp.ClientSession(own.url, headers=headers) as session,
        session.delete("/admin/ip-blocks/not-an-address") as r,
    ):
        assert r.status == 400, await r.text()
        assert_openai_error(await r.json(), "invalid_request_error")
    assert_clean_log(own)


async def test_docs_serve_html(http: aiohttp.ClientSession) -> None:
    async with http.get("/docs") as r:
        assert r.status == 200
        assert r.headers["content-type"].startswith("text/html")
        page = await r.text()
    assert "swagger" in page.lower()
    assert "/openapi.json" in page
    # Everything the page loads comes from the gateway itself (an air-gapped network has no CDN).
    assert "https://" not in page and "http://" not in page
    for asset in ("/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css"):
        assert asset in page
        async with http.get(asset) as r:
            assert r.status == 200 and len(await r.read()) > 10_000


async def test_every_request_is_counted_by_method_endpoint_and_status(
    http: aiohttp.ClientSession,
) -> None:
    before = await _metrics(http)
    async with http.get("/health") as r:
        assert r.status == 200
    async with http.get("/v1/models/chat", headers={"Authorization": "Bearer nope"}) as r:
        assert r.status == 401
    async with http.get("/admin/keys/some-key") as r:
        assert r.status == 401
    async with http.get("/no/such/path") as r:
        assert r.status == 404
    async with http.request("PROPFIND", "/health") as r:
        assert r.status == 405

    def delta(**labels: str) -> float:
        name = "gateway_requests_total"
        return _value(after, name, **labels) - _value(before, name, **labels)

    expected = [
        {"method": "GET", "endpoint": "/health", "status": "200"},
        {"method": "GET", "endpoint": "/v1/models/{model}", "status": "401"},
        {"method": "GET", "endpoint": "/admin/keys/{key_id}", "status": "401"},
        {"method": "GET", "endpoint": "unmatched", "status": "404"},
        # An unknown method is "other": no label value comes from the client as it is.
        {"method": "other", "endpoint": "/health", "status": "405"},
    ]
    # A request is counted just after its last byte went out: a scrape may overtake it.
    for _ in range(40):
        after = await _metrics(http)
        if all(delta(**labels) >= 1 for labels in expected):
            break
        await asyncio.sleep(0.05)
    assert [delta(**labels) for labels in expected] == [1] * len(expected)
    methods = {dict(labels).get("method") for _, labels in after}
    assert "PROPFIND" not in methods


async def test_openapi_documents_the_statuses_the_code_answers(http: aiohttp.ClientSession) -> None:
    paths = await _documented(http)
    for path, operations in paths.items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert "422" not in responses, (method, path)  # validation answers 400
            if operation.get("security") or path.startswith("/admin"):
                assert {"401", "403"} <= set(responses), (method, path)
    assert {"400", "404"} <= set(paths["/admin/keys/{key_id}/rotate"]["post"]["responses"])
    chat = paths["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]
    assert chat["schema"]["properties"]["messages"]["type"] == "array"
    prompt = paths["/v1/completions"]["post"]["requestBody"]["content"]["application/json"]
    assert {"type": "null"} in prompt["schema"]["properties"]["prompt"]["oneOf"]
