"""`when:` conditions on a Stripe event's object: their model, their words, and their compiled predicate.

    when: {status: active}                          equal (a list: one of)
    when: {amount_paid: {gt: 0}}                    gt, gte, lt, lte, ne, in, not_in, exists
    when: {items.data[].price.id: price_pro}        [] : any element of a list
    when: {any: [{status: active}, {paid: true}]}   any: at least one holds; all: every one holds

The predicate is compiled here, once, so that the engine and the lint rules (which try conditions on sample
objects) share one meaning.
"""
from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Mapping
from typing import Any, cast
from dataclasses import dataclass, field

from ._findings import Location

EACH = "[]"     # a path part: every element of the list reached so far
PREVIOUS = "previous_attributes"    # a path's first part: the event's previous attributes, not its object


class Op(enum.Enum):
    EQ = "eq"
    NE = "ne"
    GT = "gt"
    GTE = "gte"
    LT = "lt"
    LTE = "lte"
    IN = "in"
    NOT_IN = "not_in"
    EXISTS = "exists"


COMPARISONS = frozenset({Op.GT, Op.GTE, Op.LT, Op.LTE})
NEGATIONS = {Op.NE: Op.EQ, Op.NOT_IN: Op.IN}
GROUPS = ("any", "all")
_SYMBOL = {Op.EQ: "=", Op.NE: "!=", Op.GT: ">", Op.GTE: ">=", Op.LT: "<", Op.LTE: "<="}
_WORDS = {Op.EQ: "is", Op.NE: "is not", Op.GT: "is more than", Op.GTE: "is at least", Op.LT: "is less than",
          Op.LTE: "is at most", Op.IN: "is", Op.NOT_IN: "is neither"}


@dataclass(frozen=True, slots=True)
class Condition:
    """One test of the field at `path` (parts; "[]" means any element of a list)."""

    path: tuple[str, ...]
    op: Op
    value: object                  # a scalar; a tuple for in/not_in; a bool for exists
    location: Location | None = field(default=None, compare=False)

    @property
    def values(self) -> tuple:
        """The values an equality or membership admits (or refuses)."""
        return self.value if isinstance(self.value, tuple) else (self.value,)

    @property
    def dotted(self) -> str:
        return ".".join(self.path).replace(".[]", "[]")

    def __str__(self) -> str:
        if self.op is Op.EXISTS:
            return f"{self.dotted} {'exists' if self.value else 'missing'}"
        if self.op in (Op.IN, Op.NOT_IN):
            return f"{self.dotted}{'=' if self.op is Op.IN else '!='}{'|'.join(map(show, self.values))}"
        return f"{self.dotted}{_SYMBOL[self.op]}{show(self.value)}"

    def words(self) -> str:
        if self.op is Op.EXISTS:
            return f"{self.dotted} is {'set' if self.value else 'not set'}"
        if self.op is Op.IN:
            return f"{self.dotted} is {' or '.join(map(show, self.values))}"
        if self.op is Op.NOT_IN:
            return f"{self.dotted} is neither {' nor '.join(map(show, self.values))}"
        return f"{self.dotted} {_WORDS[self.op]} {show(self.value)}"


@dataclass(frozen=True, slots=True)
class Group:
    """`any:` (at least one member holds) or `all:` (every member holds)."""

    kind: str
    members: tuple[Condition | Group, ...]
    location: Location | None = field(default=None, compare=False)

    def __str__(self) -> str:
        return f"{self.kind}(" + ", ".join(map(str, self.members)) + ")"

    def words(self) -> str:
        joiner = " or " if self.kind == "any" else " and "
        return "(" + ("either " if self.kind == "any" else "") + joiner.join(m.words() for m in self.members) + ")"


Node = Condition | Group


def show(value: object) -> str:
    """A value as it is written in YAML."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def leaves(nodes: tuple[Node, ...]) -> Iterator[Condition]:
    for node in nodes:
        if isinstance(node, Group):
            yield from leaves(node.members)
        else:
            yield node


# --- from the document ------------------------------------------------------------------------------------

def split_path(text: str) -> tuple[str, ...]:
    """"items.data[].price.id" -> ("items", "data", "[]", "price", "id")."""
    parts: list[str] = []
    for part in text.split("."):
        parts.extend((part[:-2], EACH) if part.endswith(EACH) else (part,))
    return tuple(parts)


def build(raw: Mapping, doc_path: tuple, locate: Callable[[tuple], Location]) -> tuple[Node, ...]:
    """The conditions of a schema-valid `when` mapping (all of them must hold). `locate(path)` gives the
    location of a key in the document, for findings about one condition."""
    out: list[Node] = []
    for key, value in raw.items():
        here = doc_path + (key,)
        if key in GROUPS:
            members = []
            for i, member in enumerate(value):
                built = build(member, here + (i,), locate)
                members.append(built[0] if len(built) == 1 else Group("all", built, locate(here + (i,))))
            out.append(Group(key, tuple(members), locate(here)))
        elif isinstance(value, Mapping):
            out.extend(_operator(split_path(key), Op(op), arg, locate(here)) for op, arg in value.items())
        elif isinstance(value, list):
            out.append(Condition(split_path(key), Op.IN, tuple(value), locate(here)))
        else:
            out.append(Condition(split_path(key), Op.EQ, value, locate(here)))
    return tuple(out)


def _operator(path: tuple[str, ...], op: Op, arg: object, where: Location) -> Condition:
    return Condition(path, op, tuple(arg) if isinstance(arg, list) else arg, where)


# --- the predicate ----------------------------------------------------------------------------------------

_MISSING = object()
Predicate = Callable[[Mapping], bool]


def reach(obj: object, path: tuple[str, ...]) -> Iterator[object]:
    """Every value at path in obj ("[]" goes into each element of a list); nothing when a step is missing."""
    if not path:
        yield obj
        return
    head, rest = path[0], path[1:]
    if head == EACH:
        if isinstance(obj, list):
            for item in obj:
                yield from reach(item, rest)
    elif isinstance(obj, Mapping) and head in obj:
        yield from reach(obj[head], rest)


def _plain(path: tuple[str, ...]) -> Callable[[Mapping], object]:
    """The value at a path without lists (the common case, kept to a loop of lookups), or _MISSING."""
    def get(obj: Mapping):
        here = obj
        for part in path:
            if here.__class__ is dict or isinstance(here, Mapping):
                here = here.get(part, _MISSING)
                if here is _MISSING:
                    return _MISSING
            else:
                return _MISSING
        return here
    return get


def _same(value, wanted) -> bool:
    # True == 1 in Python; a plan's `true` must not match a Stripe 1 (and vice versa).
    return value == wanted and type(value) is type(wanted)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _test(c: Condition) -> Callable[[object], bool]:
    """The test of one reached value."""
    op, arg = c.op, cast(Any, c.value)     # its op says what it is (the schema checked it)
    if op in (Op.EQ, Op.NE):
        return lambda v: _same(v, arg)
    if op in (Op.IN, Op.NOT_IN):
        return lambda v: any(_same(v, a) for a in arg)
    if op is Op.EXISTS:
        return lambda v: v is not None
    compare = {Op.GT: float.__gt__, Op.GTE: float.__ge__, Op.LT: float.__lt__, Op.LTE: float.__le__}[op]
    limit = float(arg)
    return lambda v: _number(v) and compare(float(v), limit)  # type: ignore[arg-type]  # _number said it is


def compile_node(node: Node) -> Predicate:
    """A predicate over an event's object. A path that reaches nothing fails every test but the negations
    (ne, not_in, exists: false), which hold exactly when their positive form fails."""
    if isinstance(node, Group):
        members = tuple(compile_node(m) for m in node.members)
        if node.kind == "any":
            return lambda obj: any(p(obj) for p in members)
        return lambda obj: all(p(obj) for p in members)
    negated = node.op in NEGATIONS or (node.op is Op.EXISTS and node.value is False)
    test = _test(node)
    if EACH in node.path:
        path = node.path
        positive = lambda obj: any(test(v) for v in reach(obj, path))  # noqa: E731
    else:
        get = _plain(node.path)

        def positive(obj):
            value = get(obj)
            return value is not _MISSING and test(value)
    if negated:
        return lambda obj: not positive(obj)
    return positive


def compile_all(nodes: tuple[Node, ...]) -> Predicate:
    """One predicate for a transition's conditions (all must hold); always true when there are none."""
    predicates = tuple(compile_node(n) for n in nodes)
    if not predicates:
        return lambda obj: True
    if len(predicates) == 1:
        return predicates[0]
    return lambda obj: all(p(obj) for p in predicates)
