"""The YAML layer: positions, the fast and the pure-Python parser agreeing, and hostile input."""
from __future__ import annotations

import pytest
import yaml

from plangate.policy import check_text
from plangate.policy import _yaml


@pytest.mark.skipif(not hasattr(yaml, "CSafeLoader"), reason="PyYAML built without libyaml")
class TestFastParser:
    @pytest.mark.parametrize("extra", ["", "# Grüße 🙂 — ünïcode before the plan\n"])
    def test_positions_and_data_match_the_python_parser(self, shipped_plan, extra):
        text = extra + shipped_plan.read_text(encoding="utf-8").replace(
            "One generated response.", "Eine Antwort 🙂 für dich.")
        fast, _ = _yaml._parse_with(yaml.CSafeLoader, text, "p.yaml")
        slow, _ = _yaml._parse_with(_yaml._PythonLoader, text, "p.yaml")
        assert fast.positions == slow.positions
        assert fast.data == slow.data


class TestHostileInput:
    @pytest.mark.parametrize("text, code", [
        ("[" * 3000 + "]" * 3000, "yaml-syntax"),
        ("a: " + "[" * 100 + "]" * 100, "yaml-not-plain"),
        ("version: " + "9" * 5000, "yaml-not-plain"),
        ("initial: !!bool maybe", "yaml-not-plain"),
        ("limit: !!int ten", "yaml-not-plain"),
        ("x: !!python/object:os.system echo", "yaml-not-plain"),
        ("a: &x {b: 1}\nc: *x\n", "yaml-not-plain"),
        ("a: 1\n---\nb: 2\n", "yaml-syntax"),
        ("", "yaml-syntax"),
        ("a: \x07", "yaml-syntax"),
    ])
    def test_is_a_finding_not_a_crash(self, text, code):
        checked = check_text(text)
        assert checked.plan is None
        assert [f.code for f in checked.findings] == [code]

    def test_alias_is_reported_where_it_is_used(self):
        (finding,) = check_text("a: &x {b: 1}\nc: 2\nd: *x\n").findings
        assert (finding.location.line, finding.location.column) == (3, 4)

    def test_keys_that_yaml_reads_as_booleans_stay_text(self):
        doc, findings = _yaml.parse("on: x\nyes: y\n1: z\n", "p.yaml")
        assert findings == []
        assert doc.data == {"on": "x", "yes": "y", "1": "z"}
