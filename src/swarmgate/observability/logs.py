"""The gateway's own log lines: one handler on the ``swarmgate`` logger, to stderr.

The ASGI servers configure only their own loggers, so without this a served gateway would
print nothing of ours below a warning (and warnings without a time or a name). Structured JSON
logs and access logs will be chosen here too.
"""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: int = logging.INFO) -> None:
    """Idempotent: called once per process that serves (each worker is its own process)."""
    logger = logging.getLogger("swarmgate")
    if any(getattr(h, "swarmgate", False) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.swarmgate = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
