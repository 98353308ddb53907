"""Compiling: a table exists only for a plan without error findings; its public surface is pinned."""
from __future__ import annotations

import pytest

from plangate import engine
from plangate.engine import StateTable, compile_file, compile_plan
from plangate.policy import PlanError, PlanFileError, check_text

from .helpers import WINDOWS_PLAN

NO_WAY_OUT = """\
version: 1
meters:
  requests: {}
statuses:
  free:
    initial: true
    quotas: {requests: {limit: 1, per: day}}
  stuck: {}
transitions:
  - from: free
    on: admin:park
    to: stuck
"""


class TestCompile:
    def test_a_plan_with_an_error_finding_raises_one_error_with_the_findings(self):
        plan = check_text(NO_WAY_OUT, "stuck.yaml").plan
        assert plan is not None
        with pytest.raises(PlanError) as caught:
            compile_plan(plan)
        codes = [f.code for f in caught.value.findings if f.is_error]
        assert codes == ["no-way-out"]
        assert "stuck.yaml:8" in str(caught.value)

    def test_a_broken_file_raises_plan_error(self, tmp_path):
        path = tmp_path / "broken.yaml"
        path.write_text(NO_WAY_OUT.replace("limit: 1", "limit: -1"), encoding="utf-8")
        with pytest.raises(PlanError):
            compile_file(path)

    def test_a_missing_file_raises_plan_file_error(self, tmp_path):
        with pytest.raises(PlanFileError):
            compile_file(tmp_path / "nowhere.yaml")

    def test_a_plan_with_only_warnings_compiles(self):
        text = WINDOWS_PLAN.format(timezone="UTC").replace(
            "  - from: paid\n    on: stripe:invoice.payment_failed\n    to: free\n",
            "  - from: paid\n    on: admin:downgrade\n    to: free\n")
        checked = check_text(text)
        assert checked.findings and not any(f.is_error for f in checked.findings)
        assert isinstance(compile_plan(checked.plan), StateTable)


class TestTable:
    def test_names_the_plan_declares(self, shipped):
        assert shipped.initial == "limited_free_trial"
        assert shipped.meters == ("requests",)
        assert shipped.statuses == ("limited_free_trial", "paid_trial", "paid", "grace_period",
                                    "billing_problem", "chargeback", "paused", "canceled", "closed")
        assert shipped.actions == ("close_account", "restart_free_trial")

    def test_the_version_follows_the_plans_content(self, write_plan):
        text = WINDOWS_PLAN.format(timezone="UTC")
        a, b = write_plan(text, "a.yaml"), write_plan(text + "# a comment changes nothing\n", "b.yaml")
        c = write_plan(text.replace("limit: 10,", "limit: 11,"), "c.yaml")
        assert a.version == b.version != c.version

    def test_the_public_surface(self):
        assert sorted(engine.__all__) == sorted(set(engine.__all__))
        for name in ("StateTable", "compile_plan", "compile_file", "Decision", "Reason", "SubjectState",
                     "StripeEvent", "TimerFired", "AdminAction", "Outcome", "UsageBook", "Span",
                     "UnknownMeter", "UnknownStatus", "override"):
            assert name in engine.__all__ and hasattr(engine, name)
