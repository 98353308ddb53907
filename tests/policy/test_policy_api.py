"""The policy layer's public surface is a deliberate list: changing it should be a decision."""
from __future__ import annotations

from plangate import policy


class TestPublicNames:
    def test_all_is_pinned(self):
        assert policy.__all__ == [
            "ANCHORS", "ANY", "Access", "Anchor", "Checked", "Condition", "DurationError", "ExistingSubscribers", "FailMode",
            "Finding", "Group", "Impact", "Kind", "Location", "Meter", "Move", "NameMap", "Op", "Plan", "PlanChange",
            "PlanDiff", "PlanError", "PlanFileError", "Quota", "QuotaKind", "RULES", "Retired", "Severity", "Status",
            "Stranded", "SubjectLink", "SubscriptionScope", "Tier", "Transition", "Trigger", "TriggerKind", "Window",
            "check_file", "check_plan", "check_text", "diff_plans", "explain_stranded", "format_duration", "load_plan",
            "parse_duration", "stranded", "version_of",
        ]

    def test_every_public_name_exists(self):
        assert all(hasattr(policy, name) for name in policy.__all__)

    def test_plan_error_carries_findings(self, tmp_path):
        bad = tmp_path / "plans.yaml"
        bad.write_text("version: 2\n", encoding="utf-8")
        try:
            policy.load_plan(bad)
        except policy.PlanError as exc:
            assert exc.findings and all(isinstance(f, policy.Finding) for f in exc.findings)
            assert "error(s)" in str(exc)
        else:
            raise AssertionError("load_plan accepted a broken plan")
