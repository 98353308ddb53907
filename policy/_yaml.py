"""Reads YAML into plain data, remembering the line and column of every node.

PyYAML keeps the last of two equal keys and accepts tags that build objects;
here both are findings, and so are aliases (they make a plan hard to read and
can blow up in size).
"""
from __future__ import annotations

import re
from typing import Any
from dataclasses import dataclass, field

import yaml

from ._findings import Finding, Location, Severity

Path = tuple[str | int, ...]
MAX_DEPTH = 16

_PLAIN_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:map",
    "tag:yaml.org,2002:seq",
}


@dataclass(frozen=True)
class Document:
    """Plain data plus where each node stands: path -> (line, column), 1-based."""

    file: str
    data: Any                   # the document as YAML gives it: mappings, lists and scalars
    positions: dict[Path, tuple[int, int]]
    ignores: dict[int, frozenset[str]] = field(default_factory=dict)   # line -> codes its comment silences

    def locate(self, path: Path) -> Location:
        """The location of the node at path, or of its nearest located parent."""
        probe = tuple(path)
        while probe not in self.positions and probe:
            probe = probe[:-1]
        line, column = self.positions.get(probe, (1, 1))
        return Location(self.file, line, column, tuple(path))

    def key_location(self, path: Path) -> Location:
        """The location of a mapping key (the key itself, not its value)."""
        line, column = self.positions.get(("key",) + tuple(path), self.positions.get(tuple(path), (1, 1)))
        return Location(self.file, line, column, tuple(path))


# `# plangate: ignore[code, other-code]` at the end of a line (a YAML comment: after a space, or alone).
_IGNORE = re.compile(r"(?:^|\s)#\s*plangate:\s*ignore\[([a-z0-9,\s-]+)\]")


def ignore_comments(text: str) -> dict[int, frozenset[str]]:
    """The finding codes each line's comment silences, by 1-based line number."""
    out = {}
    for number, line in enumerate(text.splitlines(), 1):
        match = _IGNORE.search(line) if "plangate" in line else None
        if match:
            out[number] = frozenset(code.strip() for code in match.group(1).split(",") if code.strip())
    return out


def _finding(file: str, code: str, message: str, mark, path: Path = ()) -> Finding:
    line = mark.line + 1 if mark is not None else 1
    column = mark.column + 1 if mark is not None else 1
    return Finding(code, Severity.ERROR, message, Location(file, line, column, path))


def parse(text: str, file: str) -> tuple[Document | None, list[Finding]]:
    """Parse text; on any finding the document is None.

    libyaml (when PyYAML has it) composes ten times faster; its positions are the same, but
    only the pure-Python parser can point at an alias itself, so any problem is reported
    from a second, pure-Python pass.
    """
    fast = getattr(yaml, "CSafeLoader", None)
    if fast is not None:
        doc, findings = _parse_with(fast, text, file)
        if doc is not None:
            return doc, findings
    return _parse_with(_PythonLoader, text, file)


class _AliasUsed(Exception):
    def __init__(self, mark):
        self.mark = mark


class _PythonLoader(yaml.SafeLoader):
    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise _AliasUsed(self.peek_event().start_mark)
        return super().compose_node(parent, index)


_ALIAS = "aliases (*name) are not allowed: write the value out where it is used"
_HINTS = {"block end": "; check the indentation of this line and the one above",
          "could not find expected ':'": "; a key needs a colon and a space after it"}


def _parse_with(loader, text: str, file: str) -> tuple[Document | None, list[Finding]]:
    try:
        nodes = list(yaml.compose_all(text, Loader=loader))
    except _AliasUsed as alias:
        return None, [_finding(file, "yaml-not-plain", _ALIAS, alias.mark)]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or "not valid YAML"
        hint = next((h for key, h in _HINTS.items() if key in problem), "")
        return None, [_finding(file, "yaml-syntax", f"YAML syntax: {problem}{hint}", mark)]
    except yaml.YAMLError as exc:  # e.g. a reader error on control characters
        return None, [_finding(file, "yaml-syntax", f"YAML syntax: {exc}", getattr(exc, "problem_mark", None))]
    except RecursionError:
        return None, [_finding(file, "yaml-syntax", "YAML syntax: the document is nested too deeply", None)]
    if len(nodes) == 1 and isinstance(nodes[0], yaml.ScalarNode) and nodes[0].value == "" and \
            nodes[0].tag == "tag:yaml.org,2002:null":
        nodes = []      # a document with nothing in it (`---` alone, or only comments after it)
    if len(nodes) != 1:
        msg = "the file is empty: a plan needs at least version, meters, statuses and transitions" if not nodes \
            else "the file holds several YAML documents (---); a plan is one document"
        return None, [_finding(file, "yaml-syntax", msg, None if not nodes else nodes[1].start_mark)]
    builder = _Builder(file)
    data = builder.build(nodes[0], ())
    if builder.findings:
        return None, builder.findings
    return Document(file, data, builder.positions, ignore_comments(text)), []


class _Builder:
    def __init__(self, file: str):
        self.file = file
        self._constructor = yaml.SafeLoader("")
        self.positions: dict[Path, tuple[int, int]] = {}
        self.findings: list[Finding] = []
        self._seen_anchors: set[int] = set()

    def build(self, node, path: Path):
        self.positions[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if id(node) in self._seen_anchors:
            self.findings.append(_finding(self.file, "yaml-not-plain", _ALIAS, node.start_mark, path))
            return None
        if len(path) > MAX_DEPTH:
            # No plan needs this; stopping here keeps the later checks from recursing without end.
            self.findings.append(_finding(
                self.file, "yaml-not-plain", f"the value is nested more than {MAX_DEPTH} levels deep",
                node.start_mark, path))
            return None
        if node.tag not in _PLAIN_TAGS:
            hint = "put dates and times in quotes" if node.tag.endswith(":timestamp") else \
                "a plan holds only plain text, numbers, lists and mappings"
            self.findings.append(_finding(
                self.file, "yaml-not-plain", f"the value is of type {node.tag.rsplit(':', 1)[-1]}: {hint}",
                node.start_mark, path))
            return None
        if isinstance(node, yaml.MappingNode):
            self._seen_anchors.add(id(node))
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            self._seen_anchors.add(id(node))
            return [self.build(item, path + (i,)) for i, item in enumerate(node.value)]
        self._seen_anchors.add(id(node))
        return self._scalar(node)

    def _mapping(self, node, path: Path) -> dict:
        out: dict = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                self.findings.append(_finding(
                    self.file, "yaml-not-plain", "merge keys (<<) are not allowed: write the keys out",
                    key_node.start_mark, path))
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self.findings.append(_finding(
                    self.file, "yaml-not-plain", "a key must be plain text", key_node.start_mark, path))
                continue
            key = self._scalar(key_node)
            if not isinstance(key, str):
                key = str(key_node.value)
            child = path + (key,)
            if key in out:
                first = self.positions[("key",) + child]
                self.findings.append(_finding(
                    self.file, "duplicate-key",
                    f"the key '{key}' appears twice in this mapping (first at line {first[0]}); "
                    "YAML would silently keep only the last one: remove or merge one of them",
                    key_node.start_mark, child))
                continue
            self.positions[("key",) + child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            out[key] = self.build(value_node, child)
        return out

    def _scalar(self, node):
        """A resolved scalar node's Python value, built the way SafeLoader builds it."""
        try:
            return self._constructor.construct_object(node, deep=True)
        except (ValueError, KeyError, TypeError, yaml.YAMLError):
            # e.g. `!!int abc`, `!!bool maybe`, or a number too long to convert
            kind = node.tag.rsplit(":", 1)[-1]
            self.findings.append(_finding(
                self.file, "yaml-not-plain", f"the value {node.value[:40]!r} cannot be read as {kind}",
                node.start_mark))
            return None
