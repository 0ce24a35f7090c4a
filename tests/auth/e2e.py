"""What the identity-and-access end-to-end tests share: raw HTTP, admin calls, OpenAI errors.

Their processes come from the ``fleet`` fixture (``tests.plugins.processes``): a test module
starts its simulator and gateways once and its tests share them; every test makes its own keys,
so tests do not depend on each other's state.

``call`` is a small synchronous HTTP client on ``http.client``: the attacks send headers no
SDK would (``Basic ...``, a bare ``Bearer``, forged ``X-Forwarded-For``), and tests read the raw
status, headers and JSON body.
"""

from __future__ import annotations

import http.client
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import openai
import pytest

from tests.plugins.processes import Fleet, Gateway, Node, new_admin_key

FAST: dict[str, Any] = {"ttft_ms": 1, "tokens_per_second": 1000, "max_tokens_default": 4}
MESSAGES: list[Any] = [{"role": "user", "content": "hello"}]
REQUEST_ID = re.compile(r"^[\x20-\x7e]{1,128}$")


def server_secret() -> str:
    """A fresh 40-character ``SWARMGATE_AUTH__SECRET``."""
    return "srv-" + new_admin_key()[6:42]


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-cased names
    text: str

    @property
    def body(self) -> Any:
        return json.loads(self.text)


def call(
    url: str,
    method: str = "GET",
    *,
    key: str | None = None,
    json_body: Any = None,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> Reply:
    """One HTTP request; ``key`` becomes ``Authorization: Bearer <key>``."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    sent = dict(headers or {})
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    body = raw
    if json_body is not None:
        body = json.dumps(json_body).encode()
        sent.setdefault("Content-Type", "application/json")
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    try:
        conn.request(method, path or "/", body=body, headers=sent)
        response = conn.getresponse()
        text = response.read().decode("utf-8", errors="replace")
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, text)
    finally:
        conn.close()


def chat(gw: Gateway, key: str | None, model: str = "m", **headers: str) -> Reply:
    """A raw chat completion request."""
    body = {"model": model, "messages": MESSAGES, "max_tokens": 2}
    return call(gw.url + "/v1/chat/completions", "POST", key=key, json_body=body, headers=headers)


def sdk(gw: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=10)


def sdk_chat(gw: Gateway, key: str, model: str = "m") -> str:
    """A chat completion through the official SDK; raises the SDK's error classes."""
    with sdk(gw, key) as client:
        reply = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=2)
    return reply.choices[0].message.content or ""


def assert_error(reply: Reply, status: int, error_type: str, code: str | None = None) -> None:
    """A clear JSON error in OpenAI's schema, carrying the request id."""
    assert reply.status == status, (reply.status, reply.text)
    assert reply.headers.get("content-type", "").startswith("application/json"), reply.headers
    error = reply.body["error"]
    assert set(error) >= {"message", "type", "param", "code", "request_id"}, error
    assert isinstance(error["message"], str) and error["message"], error
    assert error["type"] == error_type, error
    if code is not None:
        assert error["code"] == code, error
    assert REQUEST_ID.match(error["request_id"]), error
    assert "Traceback" not in reply.text


def assert_sdk_error(exc: openai.APIStatusError, status: int, error_type: str) -> None:
    assert exc.status_code == status, exc
    assert exc.type == error_type, exc.body
    assert isinstance(exc.body, dict) and exc.body.get("request_id") == exc.request_id


def admin(gw: Gateway, method: str, path: str, body: Any = None, **kw: Any) -> Reply:
    """An admin API call with the gateway's bootstrap admin key."""
    return call(gw.url + path, method, key=gw.admin_key, json_body=body, **kw)


def create_key(gw: Gateway, **fields: Any) -> tuple[str, str]:
    """A new key through the admin API: (key id, secret)."""
    payload = {"name": "test", "owner": "tester", "role": "user", **fields}
    reply = admin(gw, "POST", "/admin/keys", payload)
    assert reply.status == 201, reply.text
    return reply.body["key"]["id"], reply.body["secret"]


def wait_for(
    predicate: Callable[[], bool], timeout: float, interval: float = 0.05, what: str = ""
) -> float:
    """Poll until ``predicate()`` holds; return the seconds it took. Fails after ``timeout``."""
    start = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            pytest.fail(f"not within {timeout} s: {what}")
        time.sleep(interval)


def audit_records(gw: Gateway, **filters: Any) -> list[dict[str, Any]]:
    """Every audit record matching ``filters``, following the cursor through all pages."""
    records: list[dict[str, Any]] = []
    cursor: int | None = None
    while True:
        query = {**filters, "limit": 500, **({"cursor": cursor} if cursor else {})}
        reply = admin(gw, "GET", f"/admin/audit?{urlencode(query)}")
        assert reply.status == 200, reply.text
        records.extend(reply.body["data"])
        cursor = reply.body["next_cursor"]
        if cursor is None:
            return records


def assert_clean_log(gw: Gateway) -> None:
    log = gw.output()
    assert "Traceback" not in log, log
    assert "Exception in ASGI application" not in log, log


__all__ = ["Fleet", "Node"]
