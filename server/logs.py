"""Structured logs: one JSON object a line, never a secret."""
from __future__ import annotations

import contextvars
import functools
import json
import logging
import math
import sys
import time

import orjson

LOGGER_NAME = "plangate"
_SECRET_WORDS = ("token", "secret", "authorization", "password", "signature")
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


_ENCODER = json.JSONEncoder(default=str)      # json.dumps(..., default=str) builds one per call
# orjson writes a line in a tenth of the stdlib's time (a sweep logs a line per transition). Types it
# writes differently from the stdlib (enums, datetimes, dataclasses...) and non-ASCII text (the stdlib's
# lines are ASCII) go to the stdlib encoder, so a line says what it said before, only without spaces.
_ORJSON_TYPES = frozenset((str, int, bool, type(None)))     # and finite floats (orjson writes NaN as null)


@functools.lru_cache(maxsize=1024)
def _secret(key: str) -> bool:
    """Is a field of this name redacted? Asked once per name: field names are the code's keywords."""
    return any(w in key.lower() for w in _SECRET_WORDS)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": round(record.created, 3), "level": record.levelname.lower(), "event": record.getMessage()}
        rid = request_id.get()
        if rid is not None:
            entry["request_id"] = rid
        fields = getattr(record, "fields", None) or {}
        for key, value in fields.items():
            entry[key] = "[redacted]" if _secret(key) else value
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info).splitlines()[-1]
        if all(type(v) in _ORJSON_TYPES or (type(v) is float and math.isfinite(v)) for v in entry.values()):
            try:
                line = orjson.dumps(entry).decode()
            except orjson.JSONEncodeError:      # integers beyond 64 bits, lone surrogates
                pass
            else:
                if line.isascii():
                    return line
        return _ENCODER.encode(entry)


def configure(level: str = "INFO", stream=None) -> logging.Logger:
    logger = logging.getLogger(LOGGER_NAME)
    logger.handlers.clear()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return logger


def log(level: int, event: str, exc_info: bool = False, **fields) -> None:
    logging.getLogger(LOGGER_NAME).log(level, event, exc_info=exc_info, extra={"fields": fields})


def log_each(level: int, event: str, rows: list[dict]) -> None:
    """log(level, event, **fields) for each of rows, one line each, written together: a sweep logs a line
    per transition, and a record passed alone through logging (caller lookup, handler lock, a write and a
    flush per line) cost 31 us of which this keeps the record and the line (~10 us)."""
    logger = logging.getLogger(LOGGER_NAME)
    if not rows or not logger.isEnabledFor(level):
        return
    records = [logger.makeRecord(LOGGER_NAME, level, "(unknown file)", 0, event, (), None, extra={"fields": f})
               for f in rows]
    handler = logger.handlers[0] if len(logger.handlers) == 1 else None
    if (handler is None or type(handler) is not logging.StreamHandler or logger.filters or handler.filters
            or logger.propagate or level < handler.level or logger.disabled):
        for record in records:      # any other set-up (tests' capture, filters): logging's own path
            logger.handle(record)
        return
    try:
        lines = "".join(handler.format(r) + handler.terminator for r in records)
        handler.acquire()
        try:
            handler.stream.write(lines)
            handler.flush()
        finally:
            handler.release()
    except Exception:
        handler.handleError(records[0])


class Throttle:
    """Lets a message through at most once per interval (store outages must not flood the log)."""

    def __init__(self, interval: float = 10.0):
        self.interval = interval
        self._last: dict[str, float] = {}

    def ready(self, key: str) -> bool:
        now = time.monotonic()
        if now - self._last.get(key, -self.interval) >= self.interval:
            self._last[key] = now
            return True
        return False
