"""The native model routes over plain HTTP against a real gateway in front of the simulator."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.api.e2e import FAST, Processes, assert_clean_log, model
from tests.api.test_native import assert_native_error
from tests.auth.e2e import call, create_key
from tests.plugins.processes import Gateway


@pytest.fixture(scope="module")
def gw(procs: Processes) -> Iterator[Gateway]:
    sim = procs.sim({"chat": FAST, "embed": {**FAST, "embedding_dim": 4}})
    config = {
        "models": {
            "chat": model(sim.url, description="A chatty model", capabilities=["chat"]),
            "embed": model(sim.url, type="embedding"),
            "sdxl": model(sim.url, type="image"),
            "bark": model(sim.url, type="audio"),
        }
    }
    gateway = procs.gateway(config)
    yield gateway
    assert_clean_log(gateway)


def models(gw: Gateway, query: str = "", key: str | None = None) -> list[str]:
    reply = call(f"{gw.url}/api/v1/models{query}", key=key or gw.admin_key)
    assert reply.status == 200, reply.text
    return [m["model_id"] for m in reply.body["models"]]


def test_filters_by_seed_001s_types_and_status(gw: Gateway) -> None:
    assert models(gw) == ["bark", "chat", "embed", "sdxl"]
    assert models(gw, "?type=text") == ["chat", "embed"]
    assert models(gw, "?type=image") == ["sdxl"]
    assert models(gw, "?type=audio&status=available") == ["bark"]
    assert models(gw, "?status=busy") == []


def test_pages_with_limit_and_offset(gw: Gateway) -> None:
    reply = call(f"{gw.url}/api/v1/models?limit=2&offset=1", key=gw.admin_key)
    assert reply.body["total"] == 4 and reply.body["limit"] == 2 and reply.body["offset"] == 1
    assert [m["model_id"] for m in reply.body["models"]] == ["chat", "embed"]
    assert call(f"{gw.url}/api/v1/models", key=gw.admin_key).body["limit"] == 50
    for bad in ("limit=0", "limit=201", "offset=-1", "type=video", "status=gone"):
        reply = call(f"{gw.url}/api/v1/models?{bad}", key=gw.admin_key)
        assert_native_error(reply, 400, "INVALID_REQUEST")


def test_model_info(gw: Gateway) -> None:
    reply = call(f"{gw.url}/api/v1/models/chat", key=gw.admin_key)
    assert reply.status == 200, reply.text
    info = reply.body
    assert info["model_id"] == "chat" and info["type"] == "text"
    assert info["description"] == "A chatty model" and info["capabilities"] == ["chat"]
    assert info["status"] == "available"
    assert info["supported_parameters"]["max_tokens"]["default"] == 512
    image = call(f"{gw.url}/api/v1/models/sdxl", key=gw.admin_key).body
    assert "guidance_scale" in image["supported_parameters"]
    assert_native_error(call(f"{gw.url}/api/v1/models/nope", key=gw.admin_key), 404, "NOT_FOUND")


def test_needs_models_read_and_lists_only_the_keys_models(gw: Gateway) -> None:
    assert_native_error(call(f"{gw.url}/api/v1/models"), 401, "UNAUTHORIZED")
    _, limited = create_key(gw, role="user", models=["chat"])
    assert models(gw, key=limited) == ["chat"]
    hidden = call(f"{gw.url}/api/v1/models/sdxl", key=limited)
    assert_native_error(hidden, 404, "NOT_FOUND")
    _, no_read = create_key(gw, role="user", scopes=["inference:text"])
    assert_native_error(call(f"{gw.url}/api/v1/models", key=no_read), 403, "FORBIDDEN")


def test_every_model_type_has_a_native_type() -> None:
    # A model type without one answered /api/v1/models with a 500 (found by the contract run).
    from swarmgate.api.native_models import NATIVE_TYPES
    from swarmgate.types import ModelType

    assert set(NATIVE_TYPES) == set(ModelType)
