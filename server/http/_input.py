"""Request bodies: parsed and checked before any work, so bad input gets a clear 4xx and writes nothing."""
from __future__ import annotations

import asyncio
import re
import zlib
from datetime import datetime
from typing import Literal, overload
from urllib.parse import unquote

from aiohttp import hdrs, web

from plangate.engine import LAST_INSTANT, subject_problem

from . import _json
from ..gate import MAX_TRAITS

MAX_TEXT = 200
MAX_BODY = web.AppKey("max_body", int)   # bytes a /v1/ body may have
_CONTROL = re.compile("[\x00-\x1f\x7f]")     # one C scan, not a generator over every character
SURROGATE = re.compile("[\ud800-\udfff]")   # half of a UTF-16 pair: no Unicode text
_NAME = re.compile("[a-z][a-z0-9_]{0,63}")
_NOT_AN_ESCAPE = re.compile("%(?![0-9A-Fa-f]{2})")


class BadRequest(Exception):
    """A request the gate refuses: HTTP status, stable error code, and a message saying how to fix it."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers      # for the answer (a 405's Allow)


# Seconds a request's body may take to arrive once its headers have (408 after): a client trickling it in holds
# a task and a connection, and PLANGATE_IDLE_TIMEOUT bounds only the wait for a request's headers.
BODY_TIMEOUT = 10.0


def body_timeout() -> BadRequest:
    return BadRequest(408, "request_timeout", f"the body did not arrive within {BODY_TIMEOUT:g} s")


async def _body(request: web.Request, limit: int) -> bytes:
    """The request's body, at most `limit` bytes (413 past it, however it is sent), within BODY_TIMEOUT (408).
    One that came in whole with its headers (nearly every one) is taken as it is: request.read() copies it
    through a bytearray in two awaited reads, 5 µs of a check's 25 in the server."""
    if (request.content_length or 0) > limit:
        raise _too_large(limit)
    content = request.content
    if content.is_eof():
        raw = content.read_nowait()
    else:
        parts: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(BODY_TIMEOUT):
                while chunk := await content.readany():
                    parts.append(chunk)
                    size += len(chunk)
                    if size > limit:
                        raise _too_large(limit)
        except TimeoutError:
            raise body_timeout() from None
        raw = b"".join(parts)
    if len(raw) > limit:
        raise _too_large(limit)
    return decoded(request, raw, limit)


# The Content-Encodings a body may come in (zlib's window bits for each). The app decodes them itself
# (create_app turns aiohttp's decoding off): aiohttp answered br and zstd, without their packages, with a
# plain-text 400 before any route ran, and took any coding it does not know for none.
_CODINGS = {"gzip": 31, "x-gzip": 31, "deflate": 15}
ACCEPT_ENCODING = "gzip, deflate"


def decoded(request: web.Request, raw: bytes, limit: int) -> bytes:
    """raw decoded as the request's Content-Encoding says: 415 for a coding the gate does not take, 400 for a
    body not in its coding, 413 for one that decodes to more than `limit` bytes."""
    headers = request.headers.getall(hdrs.CONTENT_ENCODING, None)
    if headers is None:         # nearly every body
        return raw
    # The codings applied, in order: one list however many headers say it (RFC 9110 5.3; the first header alone
    # was decoded, and the body read as if that were all), empty elements and identity left out.
    encoding = ", ".join(headers)
    applied = [c for c in (part.strip().lower() for part in encoding.split(",")) if c not in ("", "identity")]
    if not applied:
        return raw
    coding = applied[0]
    wbits = _CODINGS.get(coding) if len(applied) == 1 else None
    if wbits is None:
        raise BadRequest(415, "unsupported_media_type", f"the body's Content-Encoding ({encoding[:40]}) is not one "
                                                        "the gate takes: send it as it is, or in gzip or deflate",
                         headers={"Accept-Encoding": ACCEPT_ENCODING})
    if coding == "deflate" and raw[:1] and raw[0] & 0x0F != 8:
        wbits = -15                 # deflate without the zlib wrapper, which some clients send
    inflater = zlib.decompressobj(wbits)
    try:
        body = inflater.decompress(raw, limit + 1)
    except zlib.error:
        body = b""
    if len(body) > limit:
        raise _too_large(limit)
    if not inflater.eof or inflater.unused_data:
        raise BadRequest(400, "invalid_body", f"the body could not be decoded as its Content-Encoding "
                                              f"({encoding[:40]}) says")
    return body


def _too_large(limit: int) -> BadRequest:
    return BadRequest(413, "body_too_large", f"the body is larger than {limit} bytes")


async def json_object(request: web.Request, allowed: set[str]) -> dict:
    raw = await _body(request, request.app[MAX_BODY])
    try:
        body = _json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest(400, "invalid_json", "the body is nested too deeply") from None
    if not isinstance(body, dict):
        raise BadRequest(400, "invalid_json", "the body must be a JSON object")
    try:
        _json.check_unique(raw, body)
    except _json.NamedTwice as exc:
        raise BadRequest(400, "duplicate_field", f"the body names {exc.name[:64]!r} twice in one object: which one "
                                                 "counts would be a guess; send each field once") from None
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadRequest(400, "unknown_field", f"unknown field(s): {', '.join(unknown)}; "
                                               f"allowed: {', '.join(sorted(allowed))}")
    return body


def has_control(value: str) -> bool:
    """Whether value holds a control character (C0 or DEL), which no field takes."""
    return _CONTROL.search(value) is not None


@overload
def text(body: dict, name: str, *, required: Literal[True] = ...) -> str: ...
@overload
def text(body: dict, name: str, *, required: bool) -> str | None: ...


def text(body: dict, name: str, *, required: bool = True) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise BadRequest(400, "missing_field", f"'{name}' is required")
        if name in body:    # the spec says a string: null is refused, not taken for "not given"
            raise BadRequest(400, "invalid_field", f"'{name}' must be a string or left out, not null")
        return None
    if not isinstance(value, str):
        raise BadRequest(400, "invalid_field", f"'{name}' must be a string, not {type(value).__name__}")
    if not value or len(value) > MAX_TEXT:
        raise BadRequest(400, "invalid_field", f"'{name}' must be 1 to {MAX_TEXT} characters long")
    if _CONTROL.search(value):
        raise BadRequest(400, "invalid_field", f"'{name}' must not contain control characters")
    if not value.isascii() and SURROGATE.search(value):
        # JSON lets "\ud800" through; the store cannot encode it (it would be a 500).
        raise BadRequest(400, "invalid_field", f"'{name}' must be valid Unicode (no lone surrogates)")
    return value


def in_path(request: web.Request, name: str = "subject") -> str:
    """A path parameter as its sender meant it. aiohttp leaves a percent-escape that is not UTF-8 (%FF), or no
    escape at all (%zz), as it is, which would name another subject (the one sent as %25FF): such a path is
    refused."""
    value = request.match_info[name]
    if "%" in value:
        raw = request.raw_path.partition("?")[0]
        try:
            unquote(raw, errors="strict")
        except UnicodeDecodeError:
            raw = "%"
        if _NOT_AN_ESCAPE.search(raw):
            raise BadRequest(400, "invalid_field", f"the path's '{name}' must be percent-encoded UTF-8") from None
    return value


def subject(body: dict, name: str = "subject") -> str:
    """A subject id, by the one rule every door applies (plangate.engine.subject_problem)."""
    value = text(body, name)
    problem = subject_problem(value)
    if problem is not None:
        raise BadRequest(400, "invalid_field", f"'{name}' {problem}")
    return value


def amount(body: dict, maximum: int) -> int:
    value = body.get("amount", 1)
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadRequest(400, "invalid_field", f"'amount' must be a whole number, not {type(value).__name__}")
    if not 1 <= value <= maximum:
        raise BadRequest(400, "invalid_field", f"'amount' must be from 1 to {maximum}, not {value}")
    return value


def one_of(value: str, known: tuple[str, ...], code: str, what: str) -> str:
    if value not in known:
        raise BadRequest(422, code, f"unknown {what} '{value}'; " + (f"known: {', '.join(known)}" if known else
                                                                      f"the plan has no {what}"))
    return value


def whole(body: dict, name: str, low: int, high: int) -> int | None:
    """An optional whole number from low to high."""
    value = body.get(name)
    if value is None and name not in body:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise BadRequest(400, "invalid_field", f"'{name}' must be a whole number from {low} to {high}")
    return value


def instant(body: dict, name: str) -> float | None:
    """An optional time, as RFC 3339 text with a zone ("2027-01-01T00:00:00Z"), before the year 9000 in UTC (an
    offset can take 9999-12-31 past what a date holds: stored, it could never be shown again)."""
    value = body.get(name)
    if value is None and name not in body:
        return None
    if not isinstance(value, str) or len(value) > 40:
        raise BadRequest(400, "invalid_field", f"'{name}' must be a time like \"2027-01-01T00:00:00Z\"")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest(400, "invalid_field", f"'{name}' must be a time like \"2027-01-01T00:00:00Z\"") from None
    if moment.tzinfo is None:
        raise BadRequest(400, "invalid_field", f"'{name}' needs a time zone: end it with Z or an offset")
    if moment.timestamp() >= LAST_INSTANT:
        raise BadRequest(400, "invalid_field", f"'{name}' must be before 9000-01-01T00:00:00Z")
    return moment.timestamp()


def traits(body: dict) -> dict[str, int]:
    """{"traits": {name: whole number}}: names as the plan's, at most MAX_TRAITS of them."""
    if "traits" not in body:
        raise BadRequest(400, "missing_field", "'traits' is required")
    value = body.get("traits")
    if not isinstance(value, dict) or not value or len(value) > MAX_TRAITS:
        raise BadRequest(400, "invalid_field", f"'traits' must be an object of 1 to {MAX_TRAITS} names and whole "
                                               "numbers, e.g. {\"members\": 40}")
    for name, number in value.items():
        if not _NAME.fullmatch(name):
            raise BadRequest(400, "invalid_field", f"trait name {name[:64]!r} must be lower case letters, digits "
                                                   "and _, starting with a letter")
        if not isinstance(number, int) or isinstance(number, bool) or not 0 <= number <= 1_000_000_000:
            raise BadRequest(400, "invalid_field", f"trait '{name}' must be a whole number from 0 to 1000000000")
    return dict(value)
