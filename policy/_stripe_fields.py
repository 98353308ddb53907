"""What the plan checks know of Stripe's objects: which object each event carries, the fields of each object
type with their types, and which fields link an object to a subject.

The data ships as data/stripe_objects.json, generated from the stripe package by
scripts/refresh_stripe_data.py (run it after upgrading stripe). Each object type is a tree: a field's type is a
string ("string", "integer", "number", "boolean", "map", "any", "enum:a|b", "ref:<object type>"; a trailing "?"
means it may be null) or, for an object or a list of its own, a mapping whose "" key holds its type ("object",
"list") and whose "[]" key holds a list's element type.
"""
from __future__ import annotations

import difflib
import functools
import json
from dataclasses import dataclass
from pathlib import Path

from ._conditions import EACH

_DATA = Path(__file__).resolve().parent / "data" / "stripe_objects.json"
LINK_KINDS = ("customer", "subscription", "charge", "payment_intent")


@functools.cache
def _catalogue() -> dict:
    return json.loads(_DATA.read_text(encoding="utf-8"))


def source() -> str:
    """Where the field lists come from, for messages: "stripe-python 16.1.0, API version ..."."""
    return _catalogue()["source"]


def object_of(event: str) -> str | None:
    """The object type an event carries in data.object (invoice.paid -> invoice), when Stripe says."""
    return _catalogue()["events"].get(event)


def links(object_type: str) -> dict[str, list[str]]:
    """The fields of an object type that link it to a subject, by kind (customer, subscription, charge,
    payment_intent): {"invoice": {"customer": ["customer"], "subscription": ["parent.subscription_details..."]}}.
    The gate links an event by the first of these it has seen for a subject."""
    return _catalogue()["links"].get(object_type, {})


@dataclass(frozen=True, slots=True)
class FieldType:
    kind: str                       # string, integer, number, boolean, enum, map, any, object, list
    nullable: bool = False
    values: tuple[str, ...] = ()    # an enum's values

    def __str__(self) -> str:
        return "one of " + ", ".join(self.values) if self.kind == "enum" else self.kind


class NoSuchField(ValueError):
    """A path that cannot exist in an object type; the message says where it leaves the object's fields."""


def _type_of(node) -> tuple[FieldType, dict | None]:
    """A tree node's type and, for an object or a list, its children."""
    if isinstance(node, dict):
        text = node.get("", "object")
        children = node
    elif node.startswith("ref:"):
        text, children = "object" + ("?" if node.endswith("?") else ""), _catalogue()["objects"][node[4:].rstrip("?")]
    else:
        text, children = node, None
    nullable = text.endswith("?")
    text = text.rstrip("?")
    if text.startswith("enum:"):
        return FieldType("enum", nullable, tuple(text[5:].split("|"))), None
    return FieldType(text, nullable), children


def field_type(object_type: str, path: tuple[str, ...]) -> FieldType:
    """The type of the field at path in an object type; NoSuchField when there is none."""
    here = _catalogue()["objects"][object_type]
    kind = FieldType("object")
    for i, part in enumerate(path):
        walked = ".".join(path[:i]).replace(".[]", "[]")
        if kind.kind in ("map", "any"):
            return FieldType("any")
        if part == EACH:
            if kind.kind != "list":
                raise NoSuchField(f"{walked} is {_a(kind)}, not a list: `[]` goes after a list's name")
            kind, here = _type_of(here["[]"])
            continue
        if kind.kind == "list":
            raise NoSuchField(f"{walked} is a list: write {walked}[] to test each of its elements")
        if here is None or kind.kind != "object":
            raise NoSuchField(f"{walked} is {_a(kind)}: it has no field '{part}'")
        if part not in here or part == "":
            known = [k for k in here if k not in ("", EACH)]
            near = difflib.get_close_matches(part, known, n=3)
            where = walked or ("an " if object_type[0] in "aeiou" else "a ") + object_type
            hint = f"; did you mean {' or '.join(near)}?" if near else ""
            raise NoSuchField(f"{where} has no field '{part}'{hint}")
        kind, here = _type_of(here[part])
    return kind


def _a(kind: FieldType) -> str:
    if kind.kind == "enum":
        return "text (one of a fixed set)"
    return {"string": "text", "integer": "a whole number", "number": "a number", "boolean": "true or false",
            "object": "an object"}.get(kind.kind, kind.kind)


def has_object_type(name: str) -> bool:
    return name in _catalogue()["objects"]
