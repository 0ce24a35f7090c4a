"""The gateway's own log lines: text, JSON and console formats, and the level configured."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import orjson
import pytest

from swarmgate.config import Logging
from swarmgate.observability.logs import JsonFormatter, configure_logging


def _record(**extra: object) -> logging.LogRecord:
    record = logging.LogRecord(
        "swarmgate.requests", logging.WARNING, "f.py", 1, "hi %s", ("x",), None
    )
    for name, value in extra.items():
        setattr(record, name, value)
    return record


def test_a_json_line_carries_the_message_and_the_fields_given_as_extra() -> None:
    line = JsonFormatter().format(_record(request_id="req_1", trace_id="ab" * 16, status=502))
    entry = orjson.loads(line)
    assert entry["message"] == "hi x" and entry["level"] == "warning"
    assert entry["logger"] == "swarmgate.requests"
    assert (entry["request_id"], entry["trace_id"], entry["status"]) == ("req_1", "ab" * 16, 502)
    assert "args" not in entry and "msg" not in entry  # only what was given, once


def test_an_exception_is_one_string_field() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord(
            "swarmgate", logging.ERROR, "f", 1, "failed", None, sys.exc_info()
        )
    entry = orjson.loads(JsonFormatter().format(record))
    assert "ValueError: boom" in entry["exception"]


@pytest.fixture
def gateway_logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger("swarmgate")
    saved = logger.handlers[:], logger.level, logger.propagate
    yield logger
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


def test_the_settings_choose_the_format_and_the_level(gateway_logger: logging.Logger) -> None:
    configure_logging(Logging(level="warning", format="json"))
    configure_logging(Logging(level="warning", format="json"))  # again: still one handler
    handlers = [h for h in gateway_logger.handlers if getattr(h, "swarmgate", False)]
    assert len(handlers) == 1
    stream = io.StringIO()
    handlers[0].setStream(stream)  # type: ignore[attr-defined]
    logging.getLogger("swarmgate.requests").info("not at this level")
    logging.getLogger("swarmgate.requests").warning("shown", extra={"request_id": "r"})
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and orjson.loads(lines[0])["request_id"] == "r"
    configure_logging(Logging(level="debug", format="text"))
    logging.getLogger("swarmgate.x").debug("now shown")
    assert stream.getvalue().splitlines()[-1].endswith("DEBUG swarmgate.x: now shown")
