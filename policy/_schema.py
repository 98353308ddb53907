"""Checks a plan document against schema/plans.schema.json, the one description of the format.

jsonschema is imported only when a document is not valid: a clean plan is confirmed by
_fastschema, which keeps `plangate lint` on a clean plan from paying for jsonschema's import.
"""
from __future__ import annotations

import functools
import json
import re
from typing import TYPE_CHECKING, Any

from plangate import schema as plangate_schema

from . import _fastschema
from ._findings import Finding, Severity
from ._yaml import Document

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import ValidationError

SCHEMA_PATH = plangate_schema.PLANS


@functools.cache
def schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


@functools.cache
def _validator() -> Draft202012Validator:
    from jsonschema import Draft202012Validator

    return Draft202012Validator(schema())


def _surely_valid(data: object) -> bool:
    try:
        return _fastschema.is_valid(schema(), data)
    except _fastschema.Unsupported:
        return False


def check(doc: Document) -> list[Finding]:
    """Every schema violation, one finding each, at the offending node."""
    if _surely_valid(doc.data):
        return []
    findings = []
    errors = [leaf for top in _validator().iter_errors(doc.data) for leaf in _most_specific(top)]
    for error in sorted(errors, key=lambda e: tuple(map(str, e.absolute_path))):
        path = tuple(error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            findings.extend(_unknown_keys(doc, error, path))
            continue
        code = "schema-" + str(error.validator).replace("_", "-").lower()
        if _is_name_error(error):
            # the error is about a key of the mapping at path: point at that key
            location = doc.key_location(path + (_instance(error),))
            message = (f"{_where(path)}: {_short(error.instance)} is not a field path: write field names of "
                       "letters, digits and _, joined by dots, with [] after a list's name, e.g. status, "
                       "metadata.plan or items.data[].price.id")
            if "when" not in path:
                message = (f"{_where(path)}: the name {_short(error.instance)} is not allowed; names use lower "
                           "case letters, digits and _, start with a letter and have at most 64 characters")
        else:
            location, message = doc.locate(path), _message(error, path)
        findings.append(Finding(code, Severity.ERROR, message, location))
    return findings


def _most_specific(error: ValidationError) -> list[ValidationError]:
    """For oneOf/anyOf, the errors of the alternative the value was most likely meant
    to be (the one best_match picks), so that a reader gets what to fix."""
    if error.validator in ("oneOf", "anyOf") and error.context:
        deeper = [e for e in error.context if len(e.absolute_path) > len(error.absolute_path)]
        if deeper:
            from jsonschema.exceptions import relevance

            # The alternative of the most relevant error among this level's own (best_match would go on down
            # into a nested oneOf, whose branch numbers are not this level's).
            branch = max(deeper, key=relevance).relative_schema_path[0]
            return [leaf for e in deeper if e.relative_schema_path[0] == branch for leaf in _most_specific(e)]
    return [error]


def _referenced(ref: str) -> dict[str, Any]:
    """The schema node a local $ref ("#/$defs/limit") names."""
    node: Any = schema()
    for part in ref.removeprefix("#/").split("/"):
        node = node.get(part, {}) if isinstance(node, dict) else {}
    return node if isinstance(node, dict) else {}


def _schema(error: ValidationError) -> dict[str, Any]:
    """The schema node an error is about (this schema's nodes are objects, never true/false)."""
    return error.schema if isinstance(error.schema, dict) else {}


def _instance(error: ValidationError) -> Any:
    """The document's value the error is about (jsonschema types it with its own `unset` marker)."""
    return error.instance


def _unknown_keys(doc: Document, error: ValidationError, path) -> list[Finding]:
    properties = _schema(error).get("properties", {})
    allowed = sorted(properties)
    extra = [k for k in _instance(error) if k not in properties]
    out = []
    for key in extra:
        hint = f"; allowed here: {', '.join(allowed)}" if allowed else ""
        out.append(Finding("schema-unknown-key", Severity.ERROR,
                           f"unknown key '{key}' in {_where(path)}{hint}",
                           doc.key_location(path + (key,))))
    return out


def _is_name_error(error: ValidationError) -> bool:
    return "propertyNames" in error.absolute_schema_path and isinstance(error.instance, str)


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _where(path) -> str:
    return ".".join(str(p) for p in path) if path else "the top level"


_WHOLE = re.compile(r"-?[0-9]+")     # what YAML reads as a whole number once the quotes go
# What each JSON type is called in a YAML file's words.
_KINDS = {"object": "a mapping (names with values, indented under it)", "array": "a list", "string": "text",
          "integer": "a whole number", "number": "a number", "boolean": "true or false", "null": "nothing"}


def _kind_of(value: object) -> str:
    if value is None:
        return "nothing (an empty value)"
    if isinstance(value, bool):
        return f"{str(value).lower()} (true or false)"
    if isinstance(value, str):
        return f"{_short(value)} (text)"
    if isinstance(value, int | float):
        return f"{value!r} (a number)"
    return "a mapping" if isinstance(value, dict) else "a list" if isinstance(value, list) else _short(value)


def _kind_advice(value: object, expected, described: str | None) -> str:
    """A wrong type, in YAML's words: what is written, what belongs there, and how to write it."""
    wanted = [expected] if isinstance(expected, str) else list(expected)
    text = f"{_kind_of(value)} where {' or '.join(_KINDS.get(k, k) for k in wanted)} belongs"
    if isinstance(value, str) and {"integer", "number"} & set(wanted) and _WHOLE.fullmatch(value.strip()):
        return f"{text}: write {value.strip()} without quotes"
    if value is None and "object" in wanted:
        return f"{text}: indent what belongs to it under it, or remove the empty key"
    return f"{text} ({described})" if described else text


def _message(error: ValidationError, path) -> str:
    where = _where(path)
    v = error.validator
    if v == "required":
        return f"{where} is missing {error.message.split(' is a required')[0]}"
    schema = _schema(error)
    expected: Any = error.validator_value
    if v == "oneOf" or v == "anyOf":
        described = schema.get("description")
        options = []
        for sub in schema.get(str(v), []):
            if "const" in sub:
                options.append(repr(sub["const"]))
            elif sub.get("$ref", "").endswith("/limit"):
                windows = _referenced(sub["$ref"]).get("properties", {}).get("per", {}).get("enum", ())
                options.append(f"{{limit: N, per: {'|'.join(windows)}}}")
            elif "$ref" in sub:
                options.append(sub["$ref"].rsplit("/", 1)[-1].replace("_", " "))
        return f"{where}: {error.instance!r} is not one of: {', '.join(options)}" + (
            f" ({described})" if described else "")
    if v == "enum":
        return f"{where}: {error.instance!r} is not allowed; use one of: {', '.join(map(str, expected))}"
    if v == "const":
        return f"{where}: must be {error.validator_value!r}, not {error.instance!r}"
    if v == "pattern" and path and path[-1] == "on":
        return (f"{where}: {error.instance!r} is not a trigger; write stripe:<event type>, "
                "timer, or admin:<action>")
    if v == "pattern":
        form = schema.get("description") or expected
        return f"{where}: {error.instance!r} does not match the expected form ({form})"
    if v == "type":
        return f"{where}: {_kind_advice(error.instance, expected, schema.get('description'))}"
    return f"{where}: {error.message}"
