"""Regenerate policy/data/stripe_objects.json (and stripe_event_types.txt) from the installed `stripe` package.

    .venv/bin/python scripts/refresh_stripe_data.py          # after upgrading the stripe package

The stripe package is generated from Stripe's OpenAPI description: its resource classes carry every field of
every object with its type, and its v1 event classes name the object each event type carries. From them this
script keeps what the plan checks need, and nothing else: the event types, which object type each event carries,
the field paths of those object types with their types (enums with their values), and which fields link an
object to a subject (customer, subscription, charge, payment intent). Expandable fields are ids: Stripe sends
them unexpanded in webhooks.
"""
from __future__ import annotations

import ast
import importlib
import json
import pkgutil
import sys
import typing
from pathlib import Path

import stripe
import stripe.events
from stripe._list_object import ListObject
from stripe._stripe_object import StripeObject, UntypedStripeObject

DATA = Path(__file__).resolve().parents[1] / "policy" / "data"
# Which fields link an object to a subject, by kind of link; the object's own id counts for its own kind.
LINK_FIELDS = {
    "customer": ("customer",),
    "subscription": ("subscription", "parent.subscription_details.subscription"),
    "charge": ("charge",),
    "payment_intent": ("payment_intent",),
}
OWN_KIND = {"customer": "customer", "subscription": "subscription", "charge": "charge",
            "payment_intent": "payment_intent"}


def _type_checking_names(module) -> dict[str, object]:
    """Names a generated module imports only for type checking (its forward references)."""
    names: dict[str, object] = {}
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            for imp in node.body:
                if isinstance(imp, ast.ImportFrom) and imp.module:
                    source = importlib.import_module(imp.module)
                    for alias in imp.names:
                        if hasattr(source, alias.name):
                            names[alias.asname or alias.name] = getattr(source, alias.name)
    return names


_MODULE_NAMES: dict[str, dict] = {}


def _resolve(ref, owner: type):
    """A forward reference (a class name as text) seen in owner's annotations, as the class."""
    name = ref.__forward_arg__ if isinstance(ref, typing.ForwardRef) else ref
    module = sys.modules[owner.__module__]
    if module.__name__ not in _MODULE_NAMES:
        _MODULE_NAMES[module.__name__] = {**vars(module), **_type_checking_names(module)}
    scope = _MODULE_NAMES[module.__name__]
    for holder in _enclosing(owner):
        if name in vars(holder):
            return vars(holder)[name]
    return eval(name, scope)  # noqa: S307 - a name written by Stripe's generator, e.g. "Customer"


def _enclosing(cls: type) -> list[type]:
    """cls and the classes it is nested in, innermost first (for names of nested classes)."""
    module = sys.modules[cls.__module__]
    out, here = [], module
    for part in cls.__qualname__.split("."):
        here = getattr(here, part)
        out.append(here)
    return out[::-1]


def _kind(tp, owner: type) -> tuple[str, object | None, bool]:
    """(kind, class or enum values, nullable) of an annotation."""
    if isinstance(tp, (str, typing.ForwardRef)):
        tp = _resolve(tp, owner)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        nullable = type(None) in args
        rest = [a for a in args if a is not type(None)]
        resolved = [_resolve(a, owner) if isinstance(a, (str, typing.ForwardRef)) else a for a in rest]
        if str in resolved and any(isinstance(a, type) and issubclass(a, StripeObject) for a in resolved):
            return "string", None, nullable          # an expandable field: an id in webhooks
        literals = [v for a in resolved if typing.get_origin(a) is typing.Literal for v in typing.get_args(a)]
        if literals and len(literals) == sum(len(typing.get_args(a)) for a in resolved):
            return _literal(literals) + (nullable,)
        kinds = {_kind(a, owner)[0] for a in resolved}
        if len(kinds) == 1:
            kind, detail, _ = _kind(resolved[0], owner)
            return kind, detail, nullable
        return "any", None, nullable
    if origin is typing.Literal:
        return _literal(list(args)) + (False,)
    if origin in (list, list):
        return "list", args[0] if args else None, False
    if origin in (dict, dict):
        return "map", None, False
    if isinstance(tp, type):
        if tp is bool:
            return "boolean", None, False
        if tp is int:
            return "integer", None, False
        if tp is float:
            return "number", None, False
        if tp is str:
            return "string", None, False
        if issubclass(tp, UntypedStripeObject):
            return "map", None, False
        if issubclass(tp, StripeObject):
            return "object", tp, False
    if origin is not None and isinstance(origin, type):
        if issubclass(origin, ListObject):
            return "listobject", args[0] if args else None, False
        if issubclass(origin, UntypedStripeObject):
            return "map", None, False
    return "any", None, False


def _literal(values: list) -> tuple[str, object]:
    if all(isinstance(v, bool) for v in values):
        return "boolean", None
    if all(isinstance(v, str) for v in values):
        return "enum", sorted(values)
    return "any", None


def _annotations(cls: type) -> dict:
    out: dict = {}
    for klass in reversed(cls.__mro__):
        if klass is StripeObject or not (isinstance(klass, type) and issubclass(klass, StripeObject)):
            continue
        out.update({k: v for k, v in vars(klass).get("__annotations__", {}).items()
                    if not k.startswith("_") and typing.get_origin(v) is not typing.ClassVar
                    and not (isinstance(v, str) and v.startswith("ClassVar"))})
    return out


def _is_resource(cls) -> bool:
    return isinstance(cls, type) and issubclass(cls, StripeObject) and isinstance(vars(cls).get("OBJECT_NAME"), str)


class Catalogue:
    """The field trees of object types: each resource once, nested resources as a reference ("ref:price")."""

    def __init__(self):
        self.trees: dict[str, dict] = {}
        self._todo: list[type] = []

    def add(self, cls: type) -> str:
        name = cls.OBJECT_NAME
        if name not in self.trees:
            self.trees[name] = {}          # claimed before walking: a resource may refer to itself
            self._todo.append(cls)
        return name

    def fill(self) -> None:
        while self._todo:
            cls = self._todo.pop()
            self.trees[cls.OBJECT_NAME].update(self._node(cls))

    def _node(self, cls: type) -> dict:
        return {name: self._type(tp, cls) for name, tp in sorted(_annotations(cls).items())}

    def _type(self, tp, owner: type):
        """A field's type: a string for a leaf or a reference, a dict for an object of its own."""
        kind, detail, nullable = _kind(tp, owner)
        mark = "?" if nullable else ""
        if kind == "list":
            return {"": "list" + mark, "[]": self._type(detail, owner)} if detail is not None else "list" + mark
        if kind == "listobject":
            return {"": "object" + mark, "object": "enum:list", "has_more": "boolean", "url": "string",
                    "data": {"": "list", "[]": self._type(detail, owner)}}
        if kind == "enum":
            return "enum:" + "|".join(detail) + mark
        if kind == "object":
            if _is_resource(detail):
                return "ref:" + self.add(detail) + mark
            return {"": "object" + mark, **self._node(detail)}
        return kind + mark


def flatten(trees: dict[str, dict], name: str, prefix: str = "", out: dict | None = None, depth: int = 0) -> dict:
    """An object type's field paths and their types, references followed (for the links and for tests)."""
    out = {} if out is None else out
    for key, value in trees[name].items() if isinstance(name, str) else name.items():
        if key == "":
            continue
        path = prefix + ("[]" if key == "[]" else ("." if prefix else "") + key)
        if isinstance(value, dict):
            out[path] = value.get("", "object")
            flatten(trees, value, path, out, depth)
        elif value.startswith("ref:") and depth < 2:
            out[path] = "object" + ("?" if value.endswith("?") else "")
            flatten(trees, value[4:].rstrip("?"), path, out, depth + 1)
        else:
            out[path] = value
    return out


def event_objects() -> dict[str, type]:
    """Each v1 event type and the resource class of the object it carries."""
    out: dict[str, type] = {}
    for info in pkgutil.iter_modules(stripe.events.__path__):
        if not info.name.startswith("_v1_"):
            continue
        module = importlib.import_module(f"stripe.events.{info.name}")
        for obj in vars(module).values():
            lookup = getattr(obj, "LOOKUP_TYPE", "")
            fetch = getattr(obj, "fetch_related_object", None)
            if not (isinstance(obj, type) and lookup.startswith("v1.") and fetch):
                continue
            ret = fetch.__annotations__.get("return")
            if ret:
                out[lookup[3:]] = _resolve(ret, obj)
    return out


def event_types() -> list[str]:
    from stripe.params._webhook_endpoint_create_params import WebhookEndpointCreateParams
    hint = WebhookEndpointCreateParams.__annotations__["enabled_events"]
    text = hint if isinstance(hint, str) else repr(hint)
    return sorted({t for t in ast.literal_eval(_list_of_literals(text)) if t != "*"})


def _list_of_literals(text: str) -> str:
    """The quoted values of a 'List[Literal["a", "b", ...]]' annotation written as text, as a Python list."""
    start, end = text.index("Literal[") + len("Literal["), text.rindex("]]")
    return "[" + text[start:end] + "]"


def implied_object(event: str) -> str:
    """customer.subscription.updated -> subscription, customer.discount.created -> discount."""
    prefix = event.rsplit(".", 1)[0]
    return prefix.split(".", 1)[1] if prefix.startswith("customer.") else prefix


def links(name: str, fields: dict[str, str]) -> dict[str, list[str]]:
    out = {}
    for kind, paths in LINK_FIELDS.items():
        found = [p for p in paths if fields.get(p, "").rstrip("?") == "string"]
        if OWN_KIND.get(name) == kind:
            found.insert(0, "id")
        if found:
            out[kind] = found
    return out


def main() -> None:
    by_event = event_objects()
    catalogue = Catalogue()
    for cls in sorted(set(by_event.values()), key=lambda c: c.OBJECT_NAME):
        catalogue.add(cls)
    catalogue.fill()
    trees = dict(sorted(catalogue.trees.items()))
    types = event_types()
    events = {t: by_event[t].OBJECT_NAME for t in sorted(by_event)}
    # Events the package has no class for (customer.discount.*, customer.source.*, ...): their name says the
    # object when that object type is known.
    events.update({t: implied_object(t) for t in types if t not in events and implied_object(t) in trees})
    carried = sorted(set(events.values()))
    data = {
        "source": f"stripe-python {stripe.VERSION}, API version {stripe.api_version}",
        "events": dict(sorted(events.items())),
        "links": {name: found for name in carried if (found := links(name, flatten(trees, name)))},
        "objects": trees,
    }
    # One object type a line: small enough to ship, and a refresh shows as a readable diff.
    text = "{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}" for k, v in data.items()
                              if k != "objects")
    text += ',\n"objects": {\n' + ",\n".join(f"{json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}"
                                              for k, v in trees.items()) + "\n}\n}\n"
    (DATA / "stripe_objects.json").write_text(text, encoding="utf-8")
    header = (f"# Stripe webhook event types ({data['source']}). One per line.\n"
              "# Generated by scripts/refresh_stripe_data.py from the enabled_events values of webhook endpoints.\n")
    (DATA / "stripe_event_types.txt").write_text(header + "".join(t + "\n" for t in types), encoding="utf-8")
    print(f"{len(events)} events, {len(trees)} object types, {len(text)} bytes; {len(types)} event types")


if __name__ == "__main__":
    main()
