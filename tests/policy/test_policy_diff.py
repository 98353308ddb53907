"""plangate diff: what changed between two plans, in plain words, and whether the new one would strand subjects."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from plangate.cli import main
from plangate.policy import check_text
from plangate.policy._diff import Area, Effect, diff
from plangate.policy.cli import diff as diff_command
from tests.plan_change import (RETIRE_BILLING_PROBLEM, RETIRE_TEAM, V1, WITHOUT_BILLING_PROBLEM, WITHOUT_TEAM, edited,
                               lowered_pro, renamed)



def plan(text: str, file: str = "new.yaml"):
    checked = check_text(text, file)
    assert checked.ok, [str(f) for f in checked.findings]
    return checked.plan


BASE = V1


class TestChanges:
    def test_same_plan_has_no_change(self):
        result = diff(plan(BASE, "old.yaml"), plan(BASE))
        assert result.changes == () and not result.strands
        assert result.summary() == "no change in meaning"

    def test_a_rename_is_one_change_and_strands_nothing(self):
        result = diff(plan(BASE, "old.yaml"), plan(renamed("trial", "paid_trial")))
        assert [(c.area, c.effect) for c in result.changes] == [(Area.STATUS, Effect.RENAMED)]
        (change,) = result.changes
        assert change.message == "status 'trial' is now 'paid_trial' (renamed_from)"
        assert change.statuses == ("trial",) and not result.strands

    def test_a_removed_status_without_mapping_strands(self):
        result = diff(plan(BASE, "old.yaml"), plan(edited(*WITHOUT_BILLING_PROBLEM)))
        removed = [c for c in result.changes if c.effect is Effect.REMOVED and c.area is Area.STATUS]
        assert [c.statuses for c in removed] == [("billing_problem",)]
        assert removed[0].strands and result.strands
        assert "stranded" in removed[0].message
        # its transitions are gone or lead elsewhere: said once per group of sources
        assert any(c.area is Area.TRANSITION and c.effect is Effect.CHANGED and "'canceled', not 'billing_problem'"
                   in c.message for c in result.changes)

    def test_a_removed_status_with_a_retired_mapping_does_not_strand(self):
        text = edited(*WITHOUT_BILLING_PROBLEM) + RETIRE_BILLING_PROBLEM
        result = diff(plan(BASE, "old.yaml"), plan(text))
        (retired,) = [c for c in result.changes if c.effect is Effect.RETIRED]
        assert retired.message == "status 'billing_problem' was removed; its subjects go to 'canceled' (retired)"
        assert not result.strands
        (denied,) = [c for c in result.changes if c.area is Area.QUOTA]
        assert (denied.message, denied.lowered, denied.statuses) == (
            "status 'billing_problem' (retired into 'canceled'): no quota for requests any more (5 per day before): "
            "that meter is denied", True, ("billing_problem",))

    def test_a_removed_tier_strands_and_a_retired_one_does_not(self):
        old = plan(BASE, "old.yaml")
        (change,) = diff(old, plan(edited(*WITHOUT_TEAM))).changes
        assert (change.area, change.effect, change.tiers, change.strands) == (Area.TIER, Effect.REMOVED, ("team",), True)
        retired = diff(old, plan(edited(*WITHOUT_TEAM) + RETIRE_TEAM))
        assert [(c.effect, c.strands, c.lowered, c.tiers) for c in retired.changes] == [
            (Effect.RETIRED, False, False, ("team",)), (Effect.CHANGED, False, True, ("team",))]
        # what its subscribers get in the tier they move to, said like any other change of their quota
        assert retired.changes[1].message == "tier 'team' (retired into 'pro'): requests quota lowered, 20000 per " \
            "billing period -> 5000 per billing period"

    def test_a_renamed_tier(self):
        result = diff(plan(BASE, "old.yaml"), plan(renamed("team", "business")))
        assert [c.message for c in result.changes] == ["tier 'team' is now 'business' (renamed_from)"]

    def test_a_lowered_tier_quota_says_what_existing_subscribers_get(self):
        result = diff(plan(BASE, "old.yaml"), plan(lowered_pro("at_renewal")))
        lowered = [c for c in result.changes if c.lowered]
        (quota,) = lowered
        assert (quota.tiers, quota.meter, quota.limit) == (("pro",), "requests", 3000)
        assert quota.message == ("tier 'pro': requests quota lowered, 5000 per billing period -> 3000 per billing "
                                 "period; existing subscribers get it at their next billing period")
        assert any(c.message == "tier 'pro': existing subscribers now -> at_renewal" for c in result.changes)

    def test_windows_timers_and_meters(self):
        text = edited(("requests: {limit: 20, per: day}", "requests: {limit: 20, per: week}"),
                      ("expires_after: 3d", "expires_after: 5d"),
                      ("    fail_mode: open\n", "    fail_mode: open\n  images:\n    description: One image.\n"))
        messages = [c.message for c in diff(plan(BASE, "old.yaml"), plan(text)).changes]
        assert "meter 'images' added" in messages
        assert "status 'free': requests window 20 per day -> 20 per week" in messages
        assert "status 'grace': timer 3d -> 5d" in messages

    def test_an_added_transition_from_any(self):
        text = edited(("  closed:\n", "  frozen:\n    access: deny\n    terminal: true\n  closed:\n"),
                      ("  - from: [billing_problem, canceled]\n", "  - from: any\n    on: admin:freeze\n"
                                                                   "    to: frozen\n  - from: [billing_problem, canceled]\n"))
        messages = [c.message for c in diff(plan(BASE, "old.yaml"), plan(text)).changes]
        assert messages == ["status 'frozen' added", "transition added: from any status on admin:freeze -> 'frozen'"]


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SAAS = (EXAMPLES / "saas" / "plans.yaml").read_text(encoding="utf-8")
AI = (EXAMPLES / "ai-api" / "plans.yaml").read_text(encoding="utf-8")


def changed(old: str, new: str) -> list[tuple]:
    return [(c.area, c.effect, c.message, c.lowered, c.tiers, c.statuses)
            for c in diff(plan(old, "old.yaml"), plan(new)).changes]


def swapped(text: str, *pairs: tuple[str, str]) -> str:
    for old, new in pairs:
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


class TestEntitlements:
    def test_a_feature_a_tier_and_a_status_lose(self):
        beta = swapped(SAAS, ("  audit_log: {description: Who did what in the workspace}\n",
                              "  audit_log: {description: Who did what in the workspace}\n  beta: {description: Early}\n"),
                       ("    features: [custom_domain, sso, audit_log]", "    features: [custom_domain, sso, audit_log, beta]"))
        new = swapped(SAAS, ("    features: [custom_domain, sso, audit_log]", "    features: [custom_domain, audit_log]"),
                      ("    expires_after: 7d\n    features: [tier]", "    expires_after: 7d\n    features: []"))
        assert changed(beta, new) == [
            (Area.FEATURE, Effect.REMOVED, "feature 'beta' removed: a check for it is refused (422 unknown_feature)",
             True, (), ()),
            (Area.FEATURE, Effect.CHANGED, "tier 'team': features custom_domain, sso, audit_log, beta -> "
             "custom_domain, audit_log (loses sso, beta)", True, ("team",), ()),
            (Area.FEATURE, Effect.CHANGED, "status 'past_due': features the tier's -> none (loses the tier's)", True,
             (), ("past_due",))]
        assert [c[:3] for c in changed(SAAS, beta)] == [
            (Area.FEATURE, Effect.ADDED, "feature 'beta' added"),
            (Area.FEATURE, Effect.CHANGED, "tier 'team': features custom_domain, sso, audit_log -> custom_domain, "
             "sso, audit_log, beta (gains beta)")]

    def test_add_ons_removed_and_changed(self):
        new = swapped(SAAS, ("  audit_log_addon:\n    description: The audit log for pro workspaces.\n"
                             "    prices: [price_audit_log_monthly]\n    features: [audit_log]\n", ""),
                      ("    prices: [price_export_pack_monthly]\n    quotas:\n      exports: 500",
                       "    prices: [price_export_pack_yearly]\n    quotas:\n      exports: 300"))
        assert changed(SAAS, new) == [
            (Area.ADDON, Effect.REMOVED, "add-on 'audit_log_addon' removed: subjects holding it lose what it gave "
             "(feature audit_log) now, and its prices (price_audit_log_monthly) buy nothing any more", True, (), ()),
            (Area.ADDON, Effect.CHANGED, "add-on 'export_pack': price price_export_pack_monthly no longer buys it",
             True, (), ()),
            (Area.ADDON, Effect.CHANGED, "add-on 'export_pack': price price_export_pack_yearly now buys it", False,
             (), ()),
            (Area.ADDON, Effect.CHANGED, "add-on 'export_pack': adds 300 exports a unit to the tier's limit (was 500)",
             True, (), ())]

    def test_credits_bought_and_granted(self):
        new = swapped(AI, ("      price_tokens_1m: 1000000\n    expires_after: 365d\n    on_cancel: keep",
                           "      price_tokens_1m: 500000\n    expires_after: 30d\n    on_cancel: forfeit"),
                      ("      tokens: {amount: 200000, per: billing_period, rollover: 100000}",
                       "      tokens: {amount: 100000, per: billing_period, rollover: 100000}"))
        assert changed(AI, new) == [
            (Area.CREDITS, Effect.CHANGED, "credits of tokens: price price_tokens_1m buys 500000 a unit (was 1000000)",
             True, (), ()),
            (Area.CREDITS, Effect.CHANGED, "credits of tokens: bought credits last 365d -> 30d (from the next "
             "purchase)", True, (), ()),
            (Area.CREDITS, Effect.CHANGED, "credits of tokens: on cancel keep -> forfeit", True, (), ()),
            (Area.CREDITS, Effect.CHANGED, "tier 'starter': tokens: 200000 credits per billing period, up to 100000 "
             "unspent carried over -> 100000 credits per billing period, up to 100000 unspent carried over; "
             "existing subscribers get it now", True, ("starter",), ())]
        # Tier credits follow the tier's existing_subscribers as its quotas do.
        kept = swapped(new, ("      tokens: {amount: 100000, per: billing_period, rollover: 100000}",
                             "      tokens: {amount: 100000, per: billing_period, rollover: 100000}\n"
                             "    existing_subscribers: never"))
        granted = [c for c in diff(plan(AI, "old.yaml"), plan(kept)).changes if c.message.startswith("tier 'starter'")
                   and c.area is Area.CREDITS]
        assert [c.message.rsplit("; ", 1)[1] for c in granted] == ["existing subscribers keep the old credits until "
                                                                    "upgraded"]

    def test_a_renamed_add_on_and_a_grant_over_a_longer_window(self):
        renamed_addon = swapped(SAAS, ("  audit_log_addon:\n", "  audit_addon:\n"))
        assert [c[2:4] for c in changed(SAAS, renamed_addon)] == [
            ("add-on 'audit_log_addon' removed: subjects holding it lose what it gave (feature audit_log) now, and "
             "its prices now buy 'audit_addon' (from each subscription's next event)", True),
            ("add-on 'audit_addon' added (prices price_audit_log_monthly)", False)]
        daily = swapped(AI, ("      tokens: {amount: 200000, per: billing_period, rollover: 100000}",
                             "      tokens: {amount: 10000, per: day, rollover: 100000}"))
        weekly = swapped(daily, ("{amount: 10000, per: day,", "{amount: 10000, per: week,"))
        monthly = swapped(daily, ("{amount: 10000, per: day,", "{amount: 200000, per: month,"))
        assert [c[3] for c in changed(daily, weekly)] == [True]          # 10,000 a week instead of a day
        assert [c[3] for c in changed(daily, monthly)] == [True]         # 6,570 a day instead of 10,000
        assert [c[3] for c in changed(weekly, daily)] == [False]
        assert [c[3] for c in changed(AI, daily)] == [True]              # from a billing period: cannot tell

    def test_a_tier_retired_into_another_says_what_its_subscribers_lose(self):
        retired = swapped(SAAS, ("  team:\n    prices: [price_team_seat_monthly]\n    features: [custom_domain, sso, "
                                 "audit_log]\n    quotas:\n      # Per seat: a team of 5 exports 500 a month, and calls "
                                 "300 a minute.\n      exports: {limit: 100, per: month, anchor: billing, per_unit: "
                                 "quantity}\n      api_calls: {limit: 60, per: minute, per_unit: quantity}\n", ""),
                          ("default_tier: pro\n", "default_tier: pro\nretired:\n  tiers: {team: pro}\n"))
        features = [c for c in changed(SAAS, retired) if c[0] is Area.FEATURE]
        assert features == [(Area.FEATURE, Effect.CHANGED, "tier 'team' (retired into 'pro'): features custom_domain, "
                             "sso, audit_log -> custom_domain (loses sso, audit_log)", True, ("team",), ())]

    def test_a_limit_no_longer_per_seat_or_no_longer_the_tiers_is_lowered(self):
        flat = swapped(SAAS, ("exports: {limit: 100, per: month, anchor: billing, per_unit: quantity}",
                              "exports: {limit: 200, per: month, anchor: billing}"))
        (change,) = changed(SAAS, flat)
        assert change[2].startswith("tier 'team': exports quota lowered, 100 per month") and change[3] is True
        own = swapped(SAAS, ("    features: [tier]\n    quotas:\n      exports: tier\n",
                             "    features: [tier]\n    quotas:\n      exports: {limit: 10, per: month}\n"))
        (change,) = changed(SAAS, own)
        assert change[2:4] == ("status 'paid': exports quota lowered, the tier's quota -> 10 per month", True)

    def test_the_command_marks_what_subscribers_lose(self, tmp_path):
        old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
        old.write_text(SAAS, encoding="utf-8")
        new.write_text(swapped(SAAS, ("    features: [custom_domain, sso, audit_log]",
                                      "    features: [custom_domain, audit_log]")), encoding="utf-8")
        out = io.StringIO()
        diff_command(str(old), str(new), out=out, err=io.StringIO())
        assert "[lowered] tier 'team': features custom_domain, sso, audit_log -> custom_domain, audit_log (loses sso)" \
            in out.getvalue()


def lowered(old: str, new: str) -> list[bool]:
    return [c[3] for c in changed(old, new)]


class TestWhatSubscribersLose:
    """Every way a change can give a subscriber less is marked lowered; what gives as much or more is not."""

    SCALE = "tokens: {limit: 20000000, per: month, anchor: billing, overage: unbounded}"
    STARTER = "tokens: {limit: 2000000, per: billing_period}"
    FREE = "tokens: {limit: 50000, per: month}"

    def scale(self, quota: str) -> str:
        return swapped(AI, (self.SCALE, f"tokens: {{{quota}}}"))

    def test_overage_capped_removed_or_lower(self):
        capped = self.scale("limit: 20000000, per: month, anchor: billing, overage: {up_to: 5000}")
        ((area, effect, message, marked, tiers, _),) = changed(AI, capped)
        assert (area, effect, marked, tiers) == (Area.QUOTA, Effect.CHANGED, True, ("scale",))
        assert message == ("tier 'scale': tokens quota lowered, 20000000 per month from the billing anniversary, then "
                           "unbounded overage -> 20000000 per month from the billing anniversary, then overage up to "
                           "5000 more; existing subscribers get it now")
        # the limit did not fall: --database has no lower limit to hold usage to, it counts the subscribers
        (change,) = diff(plan(AI, "old.yaml"), plan(capped)).changes
        assert (change.meter, change.limit) == (None, None)
        removed = self.scale("limit: 20000000, per: month, anchor: billing")
        less = self.scale("limit: 20000000, per: month, anchor: billing, overage: {up_to: 1000}")
        assert lowered(AI, removed) == lowered(capped, removed) == lowered(capped, less) == [True]
        assert lowered(less, capped) == lowered(capped, AI) == lowered(removed, capped) == [False]
        # overage folded into the limit: as much gets through, and more of it is included
        folded = self.scale("limit: 20005000, per: month, anchor: billing")
        assert [c[2:4] for c in changed(capped, folded)] == [
            ("tier 'scale': tokens quota raised, 20000000 per month from the billing anniversary, then overage up to "
             "5000 more -> 20005000 per month from the billing anniversary; existing subscribers get it now", False)]

    def test_a_longer_window_at_the_same_limit(self):
        weekly = swapped(AI, (self.FREE, "tokens: {limit: 50000, per: week}"))
        assert changed(weekly, AI) == [(Area.WINDOW, Effect.CHANGED, "status 'free': tokens window 50000 per week -> "
                                        "50000 per month", True, (), ("free",))]
        assert lowered(AI, weekly) == [False]
        # a limit raised less than the window grows: fewer tokens a week on average (a month is 4.35 weeks)
        assert lowered(weekly, swapped(AI, (self.FREE, "tokens: {limit: 200000, per: month}"))) == [True]
        assert lowered(weekly, swapped(AI, (self.FREE, "tokens: {limit: 220000, per: month}"))) == [False]
        per_minute = swapped(AI, ("requests: {limit: 600, per: minute}", "requests: {limit: 36000, per: hour}"))
        assert lowered(AI, per_minute) == [False]
        assert lowered(AI, swapped(per_minute, ("{limit: 36000, per: hour}", "{limit: 35999, per: hour}"))) == [True]

    def test_lifetime_is_the_longest_window(self):
        forever = swapped(AI, (self.STARTER, "tokens: {limit: 2000000, per: lifetime}"))
        assert [c[2:4] for c in changed(AI, forever)] == [
            ("tier 'starter': tokens window 2000000 per billing period -> 2000000 per lifetime; existing subscribers "
             "get it now", True)]
        assert lowered(AI, swapped(AI, (self.STARTER, "tokens: {limit: 900000000, per: lifetime}"))) == [True]
        # from lifetime to a window that renews: lowered only if a window allows less than the lifetime did
        assert lowered(forever, AI) == [False]
        assert lowered(forever, swapped(AI, (self.STARTER, "tokens: {limit: 100000, per: day}"))) == [True]
        assert lowered(forever, swapped(forever, ("2000000, per: lifetime", "1999999, per: lifetime"))) == [True]

    def test_a_billing_period_is_a_month_to_a_year(self):
        def starter(quota: str) -> str:
            return swapped(AI, (self.STARTER, f"tokens: {{{quota}}}"))
        assert lowered(AI, starter("limit: 2000000, per: month")) == [False]
        assert lowered(AI, starter("limit: 1900000, per: month")) == [True]     # less, on a monthly price
        assert lowered(AI, starter("limit: 500000, per: week")) == [False]      # 2.17 million a month
        assert lowered(AI, starter("limit: 60000, per: day")) == [True]         # 1.83 million a month
        # scale is bought yearly: 20 million a billing period is 20 million a year instead of a month
        assert lowered(AI, self.scale("limit: 20000000, per: billing_period, overage: unbounded")) == [True]

    def test_a_limit_per_another_unit(self):
        traits = swapped(SAAS, ("exports: {limit: 100, per: month, anchor: billing, per_unit: quantity}",
                                "exports: {limit: 100, per: month, anchor: billing, per_unit: {trait: seats}}"))
        assert lowered(SAAS, traits) == lowered(traits, SAAS) == [True]

    def test_a_status_given_the_tiers_quota(self):
        def free(exports: str) -> str:
            return swapped(SAAS, ("  free:\n    initial: true\n    quotas:\n      exports: {limit: 10, per: month}",
                                  f"  free:\n    initial: true\n    quotas:\n      exports: {exports}"))
        # pro allows 200 a month, team 100 a seat: more than 10 for everyone, less than 150 for some
        assert [c[2:4] for c in changed(SAAS, free("tier"))] == [
            ("status 'free': exports quota changed, 10 per month -> the tier's quota", False)]
        assert lowered(free("{limit: 150, per: month}"), free("tier")) == [True]
        assert lowered(free("unlimited"), free("tier")) == [True]

    def test_a_price_that_no_longer_selects_its_tier(self):
        def prices(pro: str, team: str) -> str:
            return edited(("prices: [price_pro]", f"prices: [{pro}]"), ("prices: [price_team]", f"prices: [{team}]"))
        both = prices("price_pro, price_pro_yearly", "price_team, price_team_yearly")
        # to the default tier, pro: its 5000 requests instead of team's 20000
        assert [c[2:4] for c in changed(both, prices("price_pro, price_pro_yearly", "price_team"))] == [
            ("tier 'team': price price_team_yearly no longer selects it (its subscriptions get the default tier)", True)]
        assert lowered(both, prices("price_pro, price_pro_yearly, price_team_yearly", "price_team")) == [False, True]
        # pro is the default tier: its subscriptions stay on it; and a price moved up to team gives more
        assert lowered(both, prices("price_pro", "price_team, price_team_yearly")) == [False]
        assert [c[2:4] for c in changed(both, prices("price_pro", "price_team, price_team_yearly, price_pro_yearly"))] \
            == [("tier 'pro': price price_pro_yearly no longer selects it (its subscriptions get tier 'team')", False),
                ("tier 'team': price price_pro_yearly now selects it", False)]

    def test_a_removed_meter(self):
        images = edited(("    fail_mode: open\n", "    fail_mode: open\n  images:\n    description: One image.\n"))
        assert changed(images, V1) == [(Area.METER, Effect.REMOVED, "meter 'images' removed: the workflow server can "
                                        "no longer check or count it", True, (), ())]

    def test_a_fail_mode_closed_is_listed_not_lowered(self):
        """What the gate answers when it cannot count is not something a subscription grants (README)."""
        closed = swapped(SAAS, ("    description: A document exported to PDF.\n    fail_mode: open",
                                "    description: A document exported to PDF.\n    fail_mode: closed"))
        assert changed(SAAS, closed) == [(Area.METER, Effect.CHANGED, "meter 'exports' fail mode open -> closed", False,
                                          (), ())]

    def test_the_command_marks_them(self, tmp_path):
        old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
        old.write_text(AI, encoding="utf-8")
        new.write_text(self.scale("limit: 20000000, per: month, anchor: billing, overage: {up_to: 5000}"),
                       encoding="utf-8")
        out = io.StringIO()
        assert diff_command(str(old), str(new), "json", out=out, err=io.StringIO()) == 0
        assert [c["lowered"] for c in json.loads(out.getvalue())["changes"]] == [True]


class TestCommand:
    @pytest.fixture
    def files(self, tmp_path):
        def write(name: str, text: str) -> str:
            path = tmp_path / name
            path.write_text(text, encoding="utf-8")
            return str(path)
        return write

    def run(self, *args, impact=None) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = diff_command(*args, out=out, err=err, impact=impact)
        return code, out.getvalue(), err.getvalue()

    def test_text_names_file_and_line_of_each_change(self, files):
        old, new = files("old.yaml", BASE), files("new.yaml", lowered_pro("at_renewal"))
        code, out, err = self.run(old, new)
        assert code == 0
        assert f"{new}:" in out and "[lowered] tier 'pro': requests quota lowered" in out
        assert "strands no subject" in err

    def test_exit_1_when_the_new_plan_would_strand(self, files):
        old, new = files("old.yaml", BASE), files("new.yaml", edited(*WITHOUT_BILLING_PROBLEM))
        code, out, err = self.run(old, new)
        assert code == 1
        assert "[strands] status 'billing_problem' removed with no mapping" in out
        assert "would strand" in err

    def test_json(self, files):
        old, new = files("old.yaml", BASE), files("new.yaml", renamed("trial", "paid_trial"))
        code, out, _ = self.run(old, new, "json")
        body = json.loads(out)
        assert code == 0 and body["strands"] is False and body["impact"] is None
        assert body["changes"] == [{"area": "status", "effect": "renamed", "file": new, "line": body["changes"][0]["line"],
                                    "message": "status 'trial' is now 'paid_trial' (renamed_from)", "strands": False,
                                    "lowered": False, "statuses": ["trial"], "tiers": []}]
        assert body["old"]["version"] != body["new"]["version"]

    def test_github_annotations(self, files):
        old, new = files("old.yaml", BASE), files("new.yaml", edited(*WITHOUT_BILLING_PROBLEM))
        code, out, _ = self.run(old, new, "github")
        assert code == 1
        assert any(line.startswith(f"::error file={new},line=") and "billing_problem" in line
                   for line in out.splitlines())

    def test_a_plan_with_errors_or_no_file_exits_2_not_the_strands_verdict(self, files):
        """1 says the change would strand subjects (CI's "add the mappings"); a diff that could not be made is 2,
        whichever plan is broken."""
        old = files("old.yaml", BASE)
        for args in ((old, files("bad.yaml", "version: 2\n")), (files("bad.yaml", "version: 2\n"), old)):
            code, _, err = self.run(*args)
            assert code == 2 and "has errors; fix them first" in err
        code, _, err = self.run(old, str(Path(old).with_name("missing.yaml")))
        assert code == 2 and "no such file" in err

    def test_as_a_real_process_each_outcome_has_its_own_code(self, files):
        old = files("old.yaml", BASE)
        news = {0: files("new.yaml", lowered_pro("at_renewal")), 1: files("strands.yaml", edited(*WITHOUT_BILLING_PROBLEM)),
                2: files("bad.yaml", "version: 2\n")}
        for expected, new in news.items():
            done = subprocess.run([sys.executable, "-m", "plangate", "diff", old, new], capture_output=True, text=True,
                                  timeout=60)
            assert done.returncode == expected, (new, done.stderr)

    def test_an_impact_that_fails_exits_2(self, files):
        from plangate.policy.cli import ImpactError

        def broken(_):
            raise ImpactError("cannot reach the store")
        code, _, err = self.run(files("old.yaml", BASE), files("new.yaml", BASE), impact=broken)
        assert code == 2 and "cannot reach the store" in err

    def test_through_the_plangate_command(self, files, capsys):
        assert main(["diff", files("old.yaml", BASE), files("new.yaml", edited(*WITHOUT_BILLING_PROBLEM))]) == 1
        assert "[strands]" in capsys.readouterr().out

    def test_as_a_real_process_it_loads_no_server_package(self, files):
        old, new = files("old.yaml", BASE), files("new.yaml", lowered_pro("at_renewal"))
        code = (f"import sys; from plangate.cli import main; rc = main(['diff', {str(old)!r}, {str(new)!r}]); "
                "loaded = [m for m in sys.modules if m.split('.')[0] in ('aiohttp', 'stripe', 'asyncpg', 'aiosqlite')"
                " or m.startswith('plangate.server')]; print(loaded); sys.exit(rc)")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().splitlines()[-1] == "[]"


def test_the_shipped_stories_second_plan_is_plans_yaml_with_one_change():
    """scenarios/plans/pro-3000-at-renewal.yaml is plans.yaml with pro's quota lowered at renewal, nothing else.
    When plans.yaml changes, copy it again and make that one change (its header says which)."""
    repo = Path(__file__).resolve().parents[2]
    shipped = check_text((repo / "plans.yaml").read_text(encoding="utf-8"), "plans.yaml")
    second = check_text((repo / "scenarios/plans/pro-3000-at-renewal.yaml").read_text(encoding="utf-8"), "second.yaml")
    result = diff(shipped.plan, second.plan)
    assert [c.message for c in result.changes] == [
        "tier 'pro': existing subscribers now -> at_renewal",
        "tier 'pro': requests quota lowered, 5000 per month from the billing anniversary -> 3000 per month from the "
        "billing anniversary; existing "
        "subscribers get it at their next billing period"]
