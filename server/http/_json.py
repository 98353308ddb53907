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


def response(data, *, status: int = 200, headers=None) -> web.Response:
    """web.json_response(data, ...) with the body made by orjson (the same JSON, compact); the stdlib
    makes what orjson refuses (lone surrogates in an echoed field name, integers beyond 64 bits)."""
    try:
        body = orjson.dumps(data)
    except orjson.JSONEncodeError:
        body = json.dumps(data).encode()
    return web.Response(body=body, status=status, headers=headers, content_type=_JSON_UTF8, charset="utf-8")
