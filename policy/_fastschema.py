"""A quick yes to "is this document valid against the schema?", so that a clean plan is
checked without importing jsonschema (over a third of a lint's whole-process time).

It knows only the keywords schema/plans.schema.json uses and answers exactly as jsonschema's
Draft 2020-12 validator does for them; on any other keyword it raises Unsupported and the
caller asks jsonschema. It never reports anything: when it says no, jsonschema runs and
produces the findings.
"""
from __future__ import annotations

import re
from typing import Any

_ANNOTATIONS = frozenset({"$schema", "$id", "$defs", "$comment", "title", "description", "examples", "default"})
_KNOWN = _ANNOTATIONS | {
    "$ref", "type", "const", "enum", "pattern", "minLength", "maxLength", "minimum", "maximum", "minItems",
    "minProperties", "required", "properties", "additionalProperties", "propertyNames", "items", "oneOf",
}


class Unsupported(Exception):
    """The schema uses something this checker does not know; ask jsonschema instead."""


def is_valid(schema: dict, instance: object) -> bool:
    return _Checker(schema).valid(schema, instance)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "number": _is_number,
    "integer": lambda v: _is_number(v) and (isinstance(v, int) or v.is_integer()),
}


def _equal(a: object, b: object) -> bool:
    """JSON equality as jsonschema has it: true is not 1, 1 is 1.0."""
    if isinstance(b, (dict, list)):
        raise Unsupported("const or enum of an array or object")
    if isinstance(a, (dict, list)):
        return False
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


class _Checker:
    def __init__(self, root: dict):
        self.root = root

    def valid(self, schema: object, value: object) -> bool:
        if schema is True or schema == {}:
            return True
        if schema is False:
            return False
        if not isinstance(schema, dict) or not _KNOWN.issuperset(schema):
            raise Unsupported(f"keywords {sorted(set(schema) - _KNOWN) if isinstance(schema, dict) else schema}")
        return all(self._keyword(schema, key, value) for key in schema if key not in _ANNOTATIONS)

    def _keyword(self, schema: dict, key: str, value: object) -> bool:
        arg = schema[key]
        if key == "$ref":
            return self.valid(self._resolve(arg), value)
        if key == "type":
            return any(_TYPES[t](value) for t in ([arg] if isinstance(arg, str) else arg))
        if key == "const":
            return _equal(value, arg)
        if key == "enum":
            return any(_equal(value, option) for option in arg)
        if key == "oneOf":
            return sum(self.valid(sub, value) for sub in arg) == 1
        if isinstance(value, str):
            return self._string(key, arg, value)
        if isinstance(value, dict):
            return self._object(schema, key, arg, value)
        if isinstance(value, list):
            return self._array(key, arg, value)
        if key == "minimum" and _is_number(value):
            return not value < arg  # as jsonschema compares: NaN passes
        if key == "maximum" and _is_number(value):
            return not value > arg
        return True  # the keyword does not apply to this kind of value

    def _string(self, key: str, arg, value: str) -> bool:
        if key == "pattern":
            return re.search(arg, value) is not None
        if key == "minLength":
            return len(value) >= arg
        if key == "maxLength":
            return len(value) <= arg
        return True

    def _object(self, schema: dict, key: str, arg, value: dict) -> bool:
        if key == "required":
            return all(name in value for name in arg)
        if key == "minProperties":
            return len(value) >= arg
        if key == "properties":
            return all(self.valid(sub, value[name]) for name, sub in arg.items() if name in value)
        if key == "additionalProperties":
            named = schema.get("properties", {})
            return all(self.valid(arg, v) for name, v in value.items() if name not in named)
        if key == "propertyNames":
            return all(self.valid(arg, name) for name in value)
        return True

    def _array(self, key: str, arg, value: list) -> bool:
        if key == "minItems":
            return len(value) >= arg
        if key == "items":
            return all(self.valid(arg, item) for item in value)
        return True

    def _resolve(self, ref: str) -> Any:
        if not ref.startswith("#/"):
            raise Unsupported(f"$ref {ref!r} outside this schema")
        node: Any = self.root
        for part in ref[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        return node
