"""Every finding code has a small broken plan that provokes exactly that problem, at a known line."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from plangate.policy import RULES, Severity, check_file, check_text

PLANS = Path(__file__).resolve().parent / "plans"
REPO = Path(__file__).resolve().parents[2]
EXPECT = re.compile(r"# expect: (?P<code>[a-z0-9-]+) (?P<severity>error|warning) line (?P<line>\d+)")

# Codes of the YAML and schema layers that must each have a fixture (the rule codes come from RULES).
YAML_CODES = {"yaml-syntax", "duplicate-key", "yaml-not-plain"}
SCHEMA_CODES = {
    "schema-unknown-key", "schema-required", "schema-type", "schema-enum", "schema-const", "schema-pattern",
    "schema-oneof", "schema-minimum", "schema-maximum", "schema-minproperties", "schema-minitems", "schema-minlength",
    "schema-maxlength",
}


def _expectation(path: Path) -> tuple[str, Severity, int]:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    match = EXPECT.fullmatch(first)
    assert match, f"{path.name}: the first line must read '# expect: <code> <severity> line <N>'"
    return match["code"], Severity(match["severity"]), int(match["line"])


FIXTURES = sorted(PLANS.glob("*.yaml"))
FIXTURE_CODES = {_expectation(p)[0] for p in FIXTURES}
RULE_CODES = {code for names, _ in RULES for code in names.split("/")}


class TestBrokenPlans:
    @pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
    def test_provokes_exactly_its_finding(self, path: Path):
        code, severity, line = _expectation(path)
        findings = check_file(path).findings
        assert [(f.code, f.severity, f.location.line) for f in findings] == [(code, severity, line)], \
            "\n".join(map(str, findings))

    @pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
    def test_is_named_after_its_code(self, path: Path):
        code, _, _ = _expectation(path)
        assert path.stem == code or path.stem.startswith(code + "--")

    @pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
    def test_message_says_what_and_location_is_in_the_file(self, path: Path):
        (finding,) = check_file(path).findings
        assert finding.location.file == str(path)
        assert finding.location.column >= 1
        assert len(finding.message) > 20


class TestCatalogue:
    def test_every_rule_code_has_a_fixture(self):
        assert RULE_CODES - FIXTURE_CODES == set()

    def test_every_yaml_and_schema_code_has_a_fixture(self):
        assert (YAML_CODES | SCHEMA_CODES) - FIXTURE_CODES == set()

    def test_no_fixture_for_an_unknown_code(self):
        assert FIXTURE_CODES - RULE_CODES - YAML_CODES - SCHEMA_CODES == set()

    def test_rule_names_are_unique_codes(self):
        codes = [code for names, _ in RULES for code in names.split("/")]
        assert len(codes) == len(set(codes))
        assert all(re.fullmatch(r"[a-z]+(-[a-z]+)*", c) for c in codes)


def test_meters_sharing_a_billing_meter_without_overage_are_no_finding(tmp_path: Path):
    """Nothing is reported to the shared billing meter when neither quota has overage: nothing billed together."""
    text = (PLANS / "stripe-meter-shared.yaml").read_text(encoding="utf-8")
    path = tmp_path / "no-overage.yaml"
    assert text.count(", overage: {up_to: 500}") == 2
    path.write_text(text.replace(", overage: {up_to: 500}", ""), encoding="utf-8")
    assert list(check_file(path).findings) == []


@pytest.mark.parametrize("old, new, says", [
    ("    quotas:\n      requests: {limit: 500, per: day}", "    quotas:\n    requests: {limit: 500, per: day}",
     "quotas: nothing (an empty value) where a mapping (names with values, indented under it) belongs: indent"),
    ("expires_after: 7d", "expires_after: 7", "expires_after: 7 (a number) where text belongs (A length of time: a "
                                              "whole number and a unit"),
    ("requests: {limit: 500, per: day}", 'requests: {limit: "500", per: day}', "write 500 without quotes"),
    ("requests: {limit: 500, per: day}", 'requests: {limit: "--5", per: day}', "'--5' (text) where a whole number "
                                                                               "belongs"),
])
def test_a_value_of_the_wrong_kind_is_said_in_a_plan_writers_words(old, new, says):
    """A product owner's slips (a quota indented like its status, a duration without its unit, a number in
    quotes) were told in the schema's words: "None is not of type object", "'500' is not of type integer"."""
    text = (REPO / "plans.yaml").read_text(encoding="utf-8")
    assert old in text
    messages = [f.message for f in check_text(text.replace(old, new, 1), "plans.yaml").findings
                if f.code == "schema-type"]
    assert any(says in m for m in messages), messages
    assert not any("--5 without quotes" in m for m in messages), messages


@pytest.mark.parametrize("quota, found", [
    ('{limit: 500, per: day, overage: {up_to: "lots"}}', [("schema-type", "overage.up_to: 'lots' (text) where a whole number belongs")]),
    ("{limit: 500, per: day, overage: {up_to: 0}}", [("schema-minimum", "overage.up_to: 0 is less than")]),
    ('{limit: "500", per: day, overage: {up_to: -3}}', [("schema-type", "limit: '500' (text) where a whole number belongs: write 500 "
                                                                        "without quotes"),
                                                        ("schema-minimum", "overage.up_to: -3 is less than")]),
    ("{limit: 500}", [("schema-oneof", "per: minute|hour|day|week|month|billing_period|lifetime}")]),
])
def test_a_quota_wrong_inside_its_overage_is_found_not_called_clean(tmp_path: Path, quota, found):
    """An error within a quota's nested alternatives (the quota's forms, then its overage's) is reported where it
    is: it used to vanish, the plan linted clean, and the gate answered 500 to every consume in the status."""
    text = (REPO / "plans.yaml").read_text(encoding="utf-8")
    line = "      requests: {limit: 500, per: day}"
    assert text.count(line) == 1
    path = tmp_path / "plans.yaml"
    path.write_text(text.replace(line, f"      requests: {quota}"), encoding="utf-8")
    findings = check_file(path).findings
    assert [(f.code, f.severity) for f in findings] == [(code, Severity.ERROR) for code, _ in found]
    for finding, (_, says) in zip(findings, found):
        assert says in finding.message and finding.location.line == text[:text.index(line)].count("\n") + 1


def test_a_misspelt_name_is_answered_with_the_one_meant(tmp_path: Path):
    text = (REPO / "plans.yaml").read_text(encoding="utf-8")
    path = tmp_path / "plans.yaml"
    path.write_text(text.replace("    to: grace_period", "    to: grace_peroid")
                    .replace("      requests: {limit: 500, per: day}", "      reqests: {limit: 500, per: day}"),
                    encoding="utf-8")
    messages = {f.code: f.message for f in check_file(path).findings}
    assert "unknown status 'grace_peroid'; did you mean 'grace_period'? known: billing_problem, " in \
        messages["unknown-status"]
    assert "unknown meter 'reqests' in statuses.paid_trial; did you mean 'requests'? known: requests" == \
        messages["unknown-meter"].removeprefix("quota for ")
