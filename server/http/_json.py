"""JSON on the hot path through orjson, with the standard library's exact behaviour kept where they differ."""
from __future__ import annotations

import json

import orjson
from aiohttp import web

# orjson only for bodies that cannot be nested deeper than the standard parser allows (a complete document
# d levels deep has 2d bytes), so "nested too deeply" is still the stdlib's answer, found by the stdlib.
_FAST_BODY = 1024
_JSON_UTF8 = "application/json"


def loads(raw: bytes):
    """json.loads(raw), same result and same errors. orjson where it gives the same object: it refuses
    what the stdlib takes (NaN, 1e400, lone surrogates, a BOM, UTF-16) and turns integers beyond 64 bits
    into floats; all of those go to the stdlib, so values, types and messages are the stdlib's."""
    if len(raw) <= _FAST_BODY:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
        else:
            if not (isinstance(body, dict) and float in map(type, body.values())):   # no generator: C only
                return body
    return json.loads(raw)


class NamedTwice(ValueError):
    """An object in a body has a name twice (RFC 8259 leaves which one counts to the parser)."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


def unique_object(pairs: list[tuple[str, object]]) -> dict:
    """json.loads' object_pairs_hook: the object, or NamedTwice."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise NamedTwice(name)
            seen.add(name)
    return obj


def check_unique(raw: bytes, body: dict) -> None:
    """Raise NamedTwice if an object in raw (which loads() made into body) has a name twice. Each structural
    comma separates two members or items, so a body with exactly len(body) - 1 commas has no nested container of
    more than one and every top-level member is in body: nothing can be twice (a check's body: 50 ns). Any other
    (nested objects, a comma in a string) is parsed again, by the stdlib, with every object's pairs seen."""
    if raw.count(b",") == len(body) - 1:
        return
    json.loads(raw, object_pairs_hook=unique_object)


def response(data, *, status: int = 200, headers=None) -> web.Response:
    """web.json_response(data, ...) with the body made by orjson (the same JSON, compact); the stdlib
    makes what orjson refuses (lone surrogates in an echoed field name, integers beyond 64 bits)."""
    try:
        body = orjson.dumps(data)
    except orjson.JSONEncodeError:
        body = json.dumps(data).encode()
    return web.Response(body=body, status=status, headers=headers, content_type=_JSON_UTF8, charset="utf-8")
