"""Whatever text or structure it is given, the loader answers with findings or a plan, never an exception."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plangate.policy import Checked, check_text
from plangate.policy._views import dot, explain, mermaid
from plangate.policy import _fastschema, _schema, _yaml

PLANS = Path(__file__).resolve().parent / "plans"
SHIPPED_TEXT = (Path(__file__).resolve().parents[2] / "plans.yaml").read_text(encoding="utf-8")
SHIPPED_DATA = _yaml.parse(SHIPPED_TEXT, "plans.yaml")[0].data
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Words of the plan language, so that mutations often stay schema-valid and reach the rules.
WORDS = st.sampled_from([
    "any", "timer", "tier", "unlimited", "open", "closed", "allow", "deny", "day", "billing_period",
    "lifetime", "7d", "0d", "-1h", "soon", "stripe:invoice.paid", "stripe:invoice.payment_failed",
    "stripe:customer.subscription.deleted", "stripe:no.such_event", "admin:close_account", "paid", "paid_trial",
    "grace_period", "canceled", "limited_free_trial", "requests", "pro", "status", "Europe/Berlin", "Nowhere/X",
])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**6), st.floats(), st.text(max_size=20), WORDS)
VALUES = WORDS | st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8) | WORDS, inner, max_size=3),
    max_leaves=8)


def _paths(data, prefix=()):
    yield prefix
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        yield from _paths(value, prefix + (key,))


def _mutate(data, path, op: str, value):
    """One edit at path: delete it, replace it, rename its key, or add a child to it."""
    if not path:
        return value if op == "replace" else data
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    last = path[-1]
    if op == "delete":
        del parent[last]
    elif op == "replace":
        parent[last] = value
    elif op == "rename" and isinstance(parent, dict):
        parent[str(value)] = parent.pop(last)
    elif op == "add" and isinstance(parent[last], dict):
        parent[last][str(value)] = value
    elif op == "add" and isinstance(parent[last], list):
        parent[last].append(value)
    return data


def _assert_answers(text: str) -> Checked:
    checked = check_text(text, "fuzz.yaml")
    assert isinstance(checked, Checked)
    assert checked.plan is not None or checked.findings
    for f in checked.findings:
        assert f.location.line >= 1 and f.location.column >= 1 and f.message
    if checked.ok:
        # a plan without errors must also be viewable
        mermaid(checked.plan), dot(checked.plan), explain(checked.plan)
    return checked


class TestLoaderNeverRaises:
    @FUZZ
    @given(st.text())
    def test_arbitrary_text(self, text):
        _assert_answers(text)

    @FUZZ
    @given(VALUES)
    def test_arbitrary_yaml_structures(self, value):
        _assert_answers(yaml.safe_dump(value, allow_unicode=True))

    @FUZZ
    @given(st.data())
    def test_mutations_of_the_shipped_plan(self, data):
        plan = copy.deepcopy(SHIPPED_DATA)
        for _ in range(data.draw(st.integers(1, 4), label="edits")):
            paths = list(_paths(plan))
            path = data.draw(st.sampled_from(paths), label="path")
            op = data.draw(st.sampled_from(["delete", "replace", "rename", "add"]), label="op")
            plan = _mutate(plan, path, op, data.draw(VALUES, label="value"))
        _assert_answers(yaml.safe_dump(plan, allow_unicode=True, sort_keys=False))

    @FUZZ
    @given(st.integers(0, SHIPPED_TEXT.count("\n")), st.text(max_size=30))
    def test_text_inserted_into_the_shipped_plan(self, line, snippet):
        lines = SHIPPED_TEXT.splitlines(keepends=True)
        _assert_answers("".join(lines[:line]) + snippet + "".join(lines[line:]))


class TestFastSchemaAgreesWithJsonschema:
    """The quick yes of _fastschema must be jsonschema's answer, or a clean lint could hide a violation."""

    @staticmethod
    def _agree(data) -> None:
        from jsonschema import Draft202012Validator

        schema = _schema.schema()
        assert _fastschema.is_valid(schema, data) is Draft202012Validator(schema).is_valid(data)

    def test_supports_every_keyword_of_the_shipped_schema(self):
        assert _fastschema.is_valid(_schema.schema(), SHIPPED_DATA) is True

    @pytest.mark.parametrize("path", sorted(PLANS.glob("*.yaml")), ids=lambda p: p.stem)
    def test_on_the_broken_plans(self, path):
        doc, _ = _yaml.parse(path.read_text(encoding="utf-8"), path.name)
        if doc is not None:
            self._agree(doc.data)

    @pytest.mark.parametrize("edit", [
        ("version", True), ("version", 1.0), ("version", "1"), ("timezone", None),
        ("statuses.paid.quotas.requests", {"limit": float("nan"), "per": "day"}),
        ("statuses.paid.quotas.requests", {"limit": 5.0, "per": "day"}),
        ("statuses.paid.quotas.requests", {"limit": 10**15, "per": "day"}),
        ("statuses.paid.quotas.requests", {"limit": 10**15 + 1, "per": "day"}),
        ("statuses.paid.quotas.requests", {"limit": float("inf"), "per": "day"}),
        ("statuses.paid.quotas.requests", {"limit": True, "per": "day"}),
        ("statuses.paid.quotas.requests", ["tier"]),
        ("statuses.paid.initial", 1),
        ("tiers.pro.prices", []),
    ], ids=repr)
    def test_on_edge_values(self, edit):
        data = copy.deepcopy(SHIPPED_DATA)
        *parents, last = edit[0].split(".")
        node = data
        for key in parents:
            node = node[key]
        node[last] = edit[1]
        self._agree(data)

    @FUZZ
    @given(st.data())
    def test_on_mutations_of_the_shipped_plan(self, data):
        plan = copy.deepcopy(SHIPPED_DATA)
        for _ in range(data.draw(st.integers(1, 3), label="edits")):
            path = data.draw(st.sampled_from(list(_paths(plan))), label="path")
            op = data.draw(st.sampled_from(["delete", "replace", "rename", "add"]), label="op")
            plan = _mutate(plan, path, op, data.draw(VALUES, label="value"))
        self._agree(plan)

    def test_unknown_keywords_are_left_to_jsonschema(self):
        with pytest.raises(_fastschema.Unsupported):
            _fastschema.is_valid({"type": "integer", "multipleOf": 3}, 4)
        with pytest.raises(_fastschema.Unsupported):
            _fastschema.is_valid({"$ref": "https://example.com/s.json"}, 4)
