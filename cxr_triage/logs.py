"""Structured (JSON lines) logging for every cxr-triage process; never log patient identifiers."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        payload.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


_REQUEST_LOGGERS = ("httpx", "httpcore", "urllib3")


def configure_logging(level: str = "INFO", *, file: str | None = None) -> None:
    """Send JSON lines to stderr, or append them to ``file``; called once by the CLI, never at import.

    A file keeps a terminal for what a person reads (progress bars, the result): ``make demo`` runs each
    step with ``CXR_LOG_FILE`` under the state folder's logs.
    """
    handler: logging.Handler
    if file:
        Path(file).parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # HTTP clients log every request at INFO: a claim loop or a worklist call would print one line each.
    quiet = logging.WARNING if logging.getLevelName(level) != logging.DEBUG else logging.DEBUG
    for name in _REQUEST_LOGGERS:
        logging.getLogger(name).setLevel(quiet)
