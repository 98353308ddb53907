"""Structured logs: one JSON object a line, never a secret.

For tests, as structlog ships its own: capture_logs() collects what the gate logs meanwhile, written by the
gate's own handler and formatter (redaction included) and parsed back; parse_lines() reads a process's
stderr the same way.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import io
import json
import logging
import math
import re
import sys
import time
from collections.abc import Iterator

import orjson

LOGGER_NAME = "plangate"
_SECRET_WORDS = ("token", "secret", "authorization", "password", "signature")
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
# Stripe's secret, restricted and publishable keys and webhook secrets, whole or masked as Stripe's own errors
# show them ("Invalid API Key provided: sk_test_****1234"): an error's text may carry one.
_KEY_LOOKING = re.compile(r"\b(?:(?:sk|rk|pk)_(?:test|live)_|whsec_)[A-Za-z0-9*]+")


def redact_keys(text: str) -> str:
    """text with every key-looking value replaced by [redacted]."""
    return _KEY_LOOKING.sub("[redacted]", text)


# json.dumps(..., default=str) builds one per call; compact, as orjson writes a line: one spacing in every line
_ENCODER = json.JSONEncoder(default=str, separators=(",", ":"))
# orjson writes a line in a fraction of the stdlib's time (a sweep logs a line per transition). Types it
# writes differently from the stdlib (enums, datetimes, dataclasses...) and non-ASCII text (the stdlib's
# lines are ASCII) go to the stdlib encoder, so a line says what it said before, only without spaces.
_ORJSON_TYPES = frozenset((str, int, bool, type(None)))     # and finite floats (orjson writes NaN as null)


@functools.lru_cache(maxsize=1024)
def _secret(key: str) -> bool:
    """Is a field of this name redacted? Asked once per name: field names are the code's keywords."""
    return any(w in key.lower() for w in _SECRET_WORDS)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        error = redact_keys(self.formatException(record.exc_info).splitlines()[-1]) if record.exc_info else None
        return self.line(record.created, record.levelname, record.getMessage(), getattr(record, "fields", None),
                         request_id.get(), error)

    def line(self, created: float, levelname: str, event: str, fields: dict | None, rid: str | None,
             error: str | None = None) -> str:
        """The line of a record made of these (format(), and log_each without a record)."""
        entry = {"ts": round(created, 3), "level": levelname.lower(), "event": event}
        if rid is not None:
            entry["request_id"] = rid
        if fields:
            for key, value in fields.items():
                entry[key] = "[redacted]" if _secret(key) else value
        if error is not None:
            entry["error"] = error
        for value in entry.values():
            kind = type(value)
            if kind not in _ORJSON_TYPES and not (kind is float and math.isfinite(value)):  # type: ignore[arg-type]
                return _ENCODER.encode(entry)
        try:
            line = orjson.dumps(entry).decode()
        except orjson.JSONEncodeError:      # integers beyond 64 bits, lone surrogates
            return _ENCODER.encode(entry)
        return line if line.isascii() else _ENCODER.encode(entry)


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
    error = fields.get("error")
    if error.__class__ is str:      # an error's text (a store's, Stripe's API's) may quote a key
        fields["error"] = redact_keys(error)
    if exc_info:
        logging.getLogger(LOGGER_NAME).log(level, event, exc_info=True, extra={"fields": fields})
    else:       # a transition or a denial: log_each's line without a LogRecord
        log_each(level, event, [fields])


def log_each(level: int, event: str, rows: list[dict]) -> None:
    """log(level, event, **fields) for each of rows, one line each, written together: a sweep logs a line
    per transition, and a record passed alone through logging pays a caller lookup, the handler's lock, a
    write and a flush per line. With the server's handler the lines are made without a LogRecord each (its
    __init__ was most of what a line still cost), all stamped with the time they are written."""
    logger = logging.getLogger(LOGGER_NAME)
    if not rows or not logger.isEnabledFor(level):
        return
    handler = logger.handlers[0] if len(logger.handlers) == 1 else None
    if (handler is None or type(handler) is not logging.StreamHandler or logger.filters or handler.filters
            or logger.propagate or level < handler.level or logger.disabled):
        for fields in rows:         # any other set-up (tests' capture, filters): logging's own path
            logger.handle(_record(logger, level, event, fields))
        return
    try:
        formatter, end = handler.formatter, handler.terminator
        if type(formatter) is JsonFormatter:
            created, levelname, rid = time.time(), logging.getLevelName(level), request_id.get()
            lines = "".join([formatter.line(created, levelname, event, f, rid) + end for f in rows])
        else:
            lines = "".join([handler.format(_record(logger, level, event, f)) + end for f in rows])
        handler.acquire()
        try:
            handler.stream.write(lines)
            handler.flush()
        finally:
            handler.release()
    except Exception:
        handler.handleError(_record(logger, level, event, rows[0]))


def _record(logger: logging.Logger, level: int, event: str, fields: dict) -> logging.LogRecord:
    return logger.makeRecord(LOGGER_NAME, level, "(unknown file)", 0, event, (), None, extra={"fields": fields})


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


def parse_lines(text: str) -> list[dict]:
    """Each line of a log stream as the object it holds; ValueError naming the first line that is not a JSON
    object (a traceback printed raw, a stray print): every line the gate writes is one."""
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if not isinstance(entry, dict):
            raise ValueError(f"log line {number} is not a JSON object: {line[:300]!r}")
        entries.append(entry)
    return entries


class CapturedLogs:
    """What capture_logs() saw: `entries` (each line parsed) and `text` (the lines as written)."""

    def __init__(self) -> None:
        self._stream = io.StringIO()

    @property
    def text(self) -> str:
        return self._stream.getvalue()

    @property
    def entries(self) -> list[dict]:
        return parse_lines(self.text)

    def events(self, event: str) -> list[dict]:
        return [e for e in self.entries if e["event"] == event]


@contextlib.contextmanager
def capture_logs(level: str = "DEBUG") -> Iterator[CapturedLogs]:
    """The gate's logger writes to memory meanwhile, set up as configure() sets it up for `plangate serve`
    (so its lines are made as in production); then its set-up before is restored."""
    logger = logging.getLogger(LOGGER_NAME)
    before = (logger.handlers[:], logger.level, logger.propagate)
    captured = CapturedLogs()
    configure(level, stream=captured._stream)
    try:
        yield captured
    finally:
        logger.handlers[:], logger.level, logger.propagate = before

