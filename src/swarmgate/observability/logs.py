"""The gateway's own log lines: one handler on the ``swarmgate`` logger, to stderr.

The ASGI servers configure only their own loggers, so without this a served gateway would
print nothing of ours below a warning (and warnings without a time or a name). Three formats
(``logging.format``): ``text`` (the default: time, level, logger, message), ``json`` (one
object a line, with the fields a line carries as ``extra``: request id, trace id, model...)
and ``console`` (short, for the demo). The level is ``logging.level``, so each environment
sets its own (``SWARMGATE_LOGGING__LEVEL=debug``). The access log is ``access.py``'s.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from swarmgate.config import Logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CONSOLE_FORMAT = "%(asctime)s %(levelname)-7s %(message)s"
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
# The attributes every LogRecord has: whatever else a record carries came as ``extra``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, the record's ``extra`` fields,
    and the exception's traceback as one string when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _STANDARD and value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def formatter_for(name: str) -> logging.Formatter:
    if name == "json":
        return JsonFormatter()
    if name == "console":
        formatter = logging.Formatter(CONSOLE_FORMAT, "%H:%M:%S")
        formatter.converter = time.localtime
        return formatter
    return logging.Formatter(FORMAT)


def configure_logging(config: Logging | None = None) -> None:
    """Called once per process that serves (each worker is its own process); again, with the
    settings once they are read, to apply their format and level."""
    logger = logging.getLogger("swarmgate")
    handler = next((h for h in logger.handlers if getattr(h, "swarmgate", False)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.swarmgate = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
    handler.setFormatter(formatter_for(config.format if config is not None else "text"))
    logger.setLevel(LEVELS[config.level] if config is not None else logging.INFO)
