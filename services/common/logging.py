"""One logging setup for every service.

    from services.common.logging import configure_logging, get_logger
    configure_logging("scheduler")
    log = get_logger(__name__)
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime

_FORMAT = "%(asctime)s %(levelname)-5s {service} %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object a line, for a log pipeline: time, level, service, logger, message
    (and the traceback, when there is one)."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self._service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(service: str, level: str | None = None) -> None:
    """Send every record to stderr, prefixed with the service name, or one JSON object a line
    with `FAIRWAY_LOG_FORMAT=json`.

    The level comes from the argument, else `FAIRWAY_LOG_LEVEL`, else INFO: this is the
    one place outside a `config.py` that reads the environment, because logging must
    work before any settings are parsed (a settings error is itself logged).
    """
    chosen = (level or os.environ.get("FAIRWAY_LOG_LEVEL") or "INFO").upper()
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("FAIRWAY_LOG_FORMAT", "").lower() == "json":
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(logging.Formatter(_FORMAT.format(service=service), "%Y-%m-%dT%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(chosen)
    # Third-party chatter that drowns the service's own lines at INFO.
    for noisy in ("httpx", "httpcore", "uvicorn.access", "openai", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)
