"""The shipped plan and the schema it is written against."""
from __future__ import annotations

import json
import re

import pytest
import yaml
from jsonschema import Draft202012Validator

from plangate.policy import check_file, load_plan


class TestShippedPlan:
    def test_lints_clean_even_strictly(self, shipped_plan):
        checked = check_file(shipped_plan)
        assert checked.findings == ()
        assert checked.ok

    def test_models_the_product(self, shipped_plan):
        plan = load_plan(shipped_plan)
        assert [s.name for s in plan.statuses] == [
            "limited_free_trial", "paid_trial", "paid", "grace_period", "billing_problem", "chargeback", "paused",
            "canceled", "closed"]
        assert plan.initial.name == "limited_free_trial"
        assert plan.status("paid_trial").expires_after == 7 * 86400
        assert (plan.status("paid_trial").expires_at.date, plan.status("paid_trial").expires_at.slack) == \
            ("trial_end", 2 * 3600)
        assert plan.status("grace_period").expires_after == 3 * 86400
        assert [m.name for m in plan.meters] == ["requests"]
        events = {t.trigger.name for t in plan.transitions}
        assert {"checkout.session.completed", "customer.subscription.created", "customer.subscription.updated",
                "customer.subscription.deleted", "invoice.paid", "invoice.payment_failed",
                "customer.subscription.paused", "customer.subscription.resumed", "charge.dispute.closed"} <= events


class TestSchema:
    def test_is_valid_json_schema_2020_12(self, repo):
        schema = json.loads((repo / "schema" / "plans.schema.json").read_text(encoding="utf-8"))
        Draft202012Validator.check_schema(schema)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"

    def test_shipped_plan_names_it_for_editors(self, shipped_plan, repo):
        first = shipped_plan.read_text(encoding="utf-8").splitlines()[0]
        assert first == "# yaml-language-server: $schema=schema/plans.schema.json"
        assert (shipped_plan.parent / first.split("$schema=", 1)[1]).is_file()


class TestPreCommitHook:
    @pytest.fixture
    def hooks(self, repo) -> dict:
        return {h["id"]: h for h in yaml.safe_load((repo / ".pre-commit-hooks.yaml").read_text(encoding="utf-8"))}

    @pytest.fixture
    def hook(self, hooks) -> dict:
        return hooks["plangate-lint"]

    def test_diff_hook_runs_plangate_diff_on_the_files_it_is_given(self, hooks):
        hook = hooks["plangate-diff"]
        assert (hook["entry"], hook["language"], hook["pass_filenames"]) == ("plangate diff", "python", False)
        assert re.search(hook["files"], "deploy/plans.yaml")

    def test_runs_plangate_lint_from_this_package(self, hook):
        assert (hook["id"], hook["entry"], hook["language"]) == ("plangate-lint", "plangate lint", "python")

    @pytest.mark.parametrize("name, matches", [
        ("plans.yaml", True), ("deploy/plans.staging.yaml", True), ("plans-eu.yml", True),
        ("myplans.yaml", False), ("config.yaml", False), ("plans.json", False),
    ])
    def test_picks_plan_files(self, hook, name, matches):
        assert bool(re.search(hook["files"], name)) is matches
