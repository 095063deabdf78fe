"""Logging for the server: plain or JSON lines, each with its request id, no card numbers.

:func:`install` sets up the root logger once per process (``loyalty serve`` calls it before
any worker is forked, so the workers inherit it):

- ``log_format = plain``: ``time level logger [request id] message``, for a terminal;
  ``log_format = json``: one JSON object per line (``time``, ``level``, ``logger``,
  ``request_id``, ``message``, ``pid``, and ``exception`` with the traceback), for a log
  shipper;
- every record carries the request id of the call it was logged in ("-" outside any call),
  from :class:`processor.service.guard.RequestIdLogFilter`;
- :class:`CardMaskFilter` replaces every run of 13 to 19 digits in the rendered message and
  in the exception text with its masked form (first 6 and last 4 digits kept, as
  :func:`processor.errors.mask_card`), so a card number that reaches a log call by mistake
  never reaches the log. Runs of other lengths (amounts, ids, timestamps) are left alone.

The filters sit on the handler, not on the loggers, so they see the records of every
logger, libraries included.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any, Final, TextIO

from processor.errors import mask_card
from processor.service.guard import RequestIdLogFilter

LOG_FORMATS: Final = ("plain", "json")
PLAIN_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"

_CARD_NUMBER: Final = re.compile(r"(?<!\d)\d{13,19}(?!\d)")
_HANDLER_NAME: Final = "loyalty"


def mask_cards(text: str) -> str:
    """``text`` with every run of 13 to 19 digits masked to its first 6 and last 4."""
    return _CARD_NUMBER.sub(lambda match: mask_card(match.group()), text)


class CardMaskFilter(logging.Filter):
    """Masks card numbers in a record's message (arguments merged) and exception text."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_cards(message)
        if masked != message or record.args:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_cards(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_cards(record.stack_info)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
            "pid": record.process,
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, ensure_ascii=False, default=str)


def _utc(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def make_handler(log_format: str = "plain", stream: TextIO | None = None) -> logging.Handler:
    """A stream handler with the request id and card mask filters and the chosen format."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log_format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.addFilter(RequestIdLogFilter())
    handler.addFilter(CardMaskFilter())
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(PLAIN_FORMAT))
    return handler


def install(
    log_format: str = "plain", log_level: str | int = "INFO", stream: TextIO | None = None
) -> logging.Handler:
    """Make the root logger write through :func:`make_handler` only, at ``log_level``.

    Handlers set up before (``logging.basicConfig``) are replaced, so each record is
    written once, masked. Calling it again replaces the handler it installed.
    """
    level = logging.getLevelName(log_level.upper()) if isinstance(log_level, str) else log_level
    if not isinstance(level, int):
        raise ValueError(f"unknown log level {log_level!r}")
    handler = make_handler(log_format, stream)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler


__all__ = [
    "LOG_FORMATS",
    "CardMaskFilter",
    "JsonFormatter",
    "install",
    "make_handler",
    "mask_cards",
]
