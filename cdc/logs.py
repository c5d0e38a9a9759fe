"""Structured logs: structlog events with bound context, JSON unless on a terminal.

Log events are lowercase names (``batch_written``) with bound `job`, `source`, `sink`
and `position`; never row values, never secrets (DSNs are redacted before binding).
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO, cast

import orjson
import structlog

from cdc import progress
from cdc.redaction import redact_processor


def _orjson_dumps(obj: Any, default: Any = None) -> str:
    return orjson.dumps(obj, default=default).decode()


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    """Send structlog events to stderr as JSON lines (or readable lines on a terminal)."""
    console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    if console and sys.stderr.isatty():
        progress.enable()  # snapshot progress as bars; log lines print above them
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=False)
        if console
        else structlog.processors.JSONRenderer(serializer=_orjson_dumps)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_processor,  # secrets registered from the config never reach a line (cdc/redaction.py)
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=cast(TextIO, progress.StderrProxy())),
        cache_logger_on_first_use=False,
    )
