"""Logging set-up: readable text by default, one JSON object per line with
``ALERTQ_LOG_FORMAT=json``."""

from __future__ import annotations

import logging
import sys
import unicodedata

from pythonjsonlogger.json import JsonFormatter

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
# Control characters (newline, CR, ESC, ...), line/paragraph separators and format
# characters (bidi overrides) in a message could forge log lines or hide text.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


def escape_control(text: str) -> str:
    """``text`` with every control, format and line-separator character written as a
    Python escape (``\\n``, ``\\x1b``, ``\\u202e``), so one record is one line."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch == " " or unicodedata.category(ch) not in _UNSAFE_CATEGORIES:
            out.append(ch)
        else:
            out.append(repr(ch)[1:-1])
    return "".join(out)


class TextFormatter(logging.Formatter):
    """The text format, with every message's control characters escaped. Tracebacks
    keep their lines (they come from the code, not from a caller)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_control(super().formatMessage(record))


def configure_logging(fmt: str = "text", level: str = "INFO") -> None:
    """Route alertq's (and uvicorn's) logs to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"levelname": "level", "asctime": "time"},
            )
        )
    else:
        handler.setFormatter(TextFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every request URL at INFO; alertq logs its own delivery outcomes.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
