"""Structured (JSON lines) logging. Callers pass only non-personal fields in `extra={"fields": ...}`:
message and transfer ids, kinds, agency codes, reason codes. Never names or certificate numbers.

Every line starts with `ts`, an RFC 3339 timestamp with the host's UTC offset
(`2026-05-06T10:00:00.123+08:00`), so lines from replicas in different zones sort and compare.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any, Final, TextIO

LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")


def rfc3339(created: float) -> str:
    """A `time.time()` value as local time with its offset, to the millisecond."""
    return dt.datetime.fromtimestamp(created).astimezone().isoformat(timespec="milliseconds")


class JsonFormatter(logging.Formatter):
    """`context` is added to every line after the event (a worker process's index, say)."""

    def __init__(self, context: dict[str, Any] | None = None) -> None:
        super().__init__()
        self._context = dict(context or {})

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
            **self._context,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def level_of(name: str) -> str:
    """`name` as one of LEVELS, whatever its case. Raises ValueError naming the choices."""
    level = name.upper()
    if level not in LEVELS:
        raise ValueError(f"{name!r} is not a log level; choose from {', '.join(LEVELS)}")
    return level


def configure(level: str = "INFO", stream: TextIO | None = None, context: dict[str, Any] | None = None) -> None:
    """JSON lines at `level` and above on `stream` (stderr), for the whole process; `context`'s
    fields on every line."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(context))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level_of(level))
