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
            "ADMIN_PRIORITY", "PERIOD_PRIORITY", "TIER_FEATURES", "Anchoring", "Area", "How", "OnCancel",
            "YamlDocument", "PREVIOUS", "compile_conditions", "explain_plan", "is_known_event", "parse_yaml", "read_plan_text",
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


class TestLayers:
    def test_no_module_outside_policy_imports_a_private_policy_module(self):
        """The engine and the server use policy through its public names only (policy/__init__.py)."""
        import re
        from pathlib import Path
        root = Path(policy.__file__).resolve().parent.parent
        private = re.compile(r"(from|import) plangate\.policy\._|from \.\.policy\._")
        found = [f"{path.relative_to(root)}:{n}" for folder in ("engine", "server")
                 for path in sorted((root / folder).rglob("*.py"))
                 for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if private.search(line)]
        assert found == []

