"""The access log: queued by the request, rendered and written by its own thread."""

from __future__ import annotations

import io
import random
import time
from typing import Any

import orjson

from swarmgate.observability.access import AccessLog


def _entry(n: int) -> dict[str, Any]:
    return {"time": 1_700_000_000.5, "status": 200, "path": "/v1/chat/completions", "n": n}


def test_put_only_queues_and_flush_writes_json_lines_in_order() -> None:
    out = io.BytesIO()
    log: AccessLog[dict[str, Any]] = AccessLog(dict, stream=out)
    for n in range(3):
        log.put(_entry(n))
    assert out.getvalue() == b""  # nothing written on the request's path
    log.flush()
    lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert [line["n"] for line in lines] == [0, 1, 2]


def test_the_writer_thread_writes_within_its_interval_and_stop_writes_the_rest() -> None:
    out = io.BytesIO()
    log: AccessLog[dict[str, Any]] = AccessLog(dict, stream=out, flush_interval=0.05)
    log.start()
    log.put(_entry(1))
    deadline = time.monotonic() + 5
    while not out.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert orjson.loads(out.getvalue())["n"] == 1
    log.put(_entry(2))
    log.stop()
    assert [orjson.loads(x)["n"] for x in out.getvalue().splitlines()] == [1, 2]


def test_sampling_keeps_a_share_of_answered_requests_and_every_failed_one() -> None:
    random.seed(3)
    out = io.BytesIO()
    log: AccessLog[dict[str, Any]] = AccessLog(dict, stream=out, sample=0.25)
    for n in range(2000):
        if log.wants():
            log.put(_entry(n))
    for n in range(50):
        if log.wants(failed=True):
            log.put({**_entry(n), "status": 500})
    log.flush()
    lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert 400 <= sum(1 for x in lines if x["status"] == 200) <= 600
    assert sum(1 for x in lines if x["status"] == 500) == 50


def test_a_full_queue_drops_lines_and_says_how_many() -> None:
    out = io.BytesIO()
    log: AccessLog[dict[str, Any]] = AccessLog(dict, stream=out, max_queue=2)
    for n in range(5):
        log.put(_entry(n))
    log.flush()
    lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert [x.get("n") for x in lines[:2]] == [0, 1]
    assert lines[2]["event"] == "access_log_dropped" and lines[2]["lines"] == 3
    log.put(_entry(9))
    log.flush()
    assert orjson.loads(out.getvalue().splitlines()[-1])["n"] == 9  # reported once


def test_the_console_format_is_one_short_readable_line() -> None:
    out = io.BytesIO()
    log: AccessLog[dict[str, Any]] = AccessLog(dict, stream=out, format="console")
    log.put(
        {
            **_entry(0),
            "method": "POST",
            "model": "m",
            "latency_ms": 12.5,
            "key_id": "k1",
            "error": None,
        }
    )
    log.flush()
    line = out.getvalue().decode()
    assert line.endswith("\n") and line.count("\n") == 1
    _, rest = line.split(" ", 1)
    assert rest == "200 POST /v1/chat/completions m - 12.5ms n=0 key_id=k1\n"
