"""Audit records carry the request id the client sees, for admin actions and failures alike."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from tests.plugins.processes import Gateway, Sim


def _call(gw: Gateway, path: str, key: str, rid: str, body: Any = None) -> tuple[int, str]:
    request = urllib.request.Request(
        gw.url + path,
        data=None if body is None else json.dumps(body).encode(),
        headers={
            "Authorization": f"Bearer {key}",
            "X-Request-ID": rid,
            "Content-Type": "application/json",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            r.read()
            return r.status, r.headers["x-request-id"]
    except urllib.error.HTTPError as exc:
        with exc:
            exc.read()
            return exc.code, exc.headers["x-request-id"]


def test_audit_records_carry_request_ids(
    sim_factory: Callable[..., Sim], gateway_factory: Callable[..., Gateway]
) -> None:
    sim = sim_factory({"m": {"ttft_ms": 1, "tokens_per_second": 1000}})
    gw = gateway_factory(
        {"models": {"m": {"deployments": [{"url": sim.url}]}}},
        env={"SWARMGATE_AUDIT__FLUSH_INTERVAL": "0.1"},
    )
    status, echoed = _call(
        gw, "/admin/keys", gw.admin_key, "rid-create-1", {"name": "k", "owner": "alice"}
    )
    assert (status, echoed) == (201, "rid-create-1")
    status, echoed = _call(gw, "/v1/models", "sk-sg-not-a-key", "rid-failure-1")
    assert (status, echoed) == (401, "rid-failure-1")
    deadline = time.monotonic() + 5
    while True:
        request = urllib.request.Request(
            gw.url + "/admin/audit?limit=50", headers={"Authorization": f"Bearer {gw.admin_key}"}
        )
        with urllib.request.urlopen(request, timeout=5) as r:
            records = {rec["action"]: rec for rec in json.loads(r.read())["data"]}
        if "key.create" in records and "auth.failure" in records:
            break
        assert time.monotonic() < deadline, records
        time.sleep(0.1)
    assert records["key.create"]["request_id"] == "rid-create-1"
    assert records["auth.failure"]["request_id"] == "rid-failure-1"
