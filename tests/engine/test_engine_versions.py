"""Plan versions in the engine: old names read as their new ones (and migrated once, as a plan change), and
subjects kept on an older version's tier quotas as the tier's existing_subscribers says."""
from __future__ import annotations

import pytest

from plangate.engine import (AdminAction, StateTable, StripeEvent, SubjectState, Subscription, TimerFired,
                             UnknownStatus, advance, compile_plan)
from plangate.policy import ExistingSubscribers, check_text, version_of
from tests.plan_change import (RETIRE_BILLING_PROBLEM, RETIRE_TEAM, V1, WITHOUT_BILLING_PROBLEM, WITHOUT_TEAM, edited,
                               lowered_pro, renamed)

DAY = 86400.0
DEPLOY = 1_800_000_000.0
PERIOD = (DEPLOY - 10 * DAY, DEPLOY + 20 * DAY)     # a pro subscriber's month, a third gone at the deploy


def plan(text: str, file: str = "plans.yaml"):
    checked = check_text(text, file)
    assert checked.ok, [str(f) for f in checked.findings]
    return checked.plan


V1_TABLE = compile_plan(plan(V1))


def table(text: str, deployed_at: float = DEPLOY) -> StateTable:
    return compile_plan(plan(text), {V1_TABLE.version: plan(V1)}, deployed_at)


def subscriber(status="paid", tier="pro", version=V1_TABLE.version, period=PERIOD, **kw) -> SubjectState:
    return SubjectState("ann", status, tier, DEPLOY - 10 * DAY, None, *period, version, **kw)


class TestOldNames:
    def test_a_renamed_status_is_migrated_once_keeping_its_timer(self):
        new = table(renamed("trial", "paid_trial"))
        stored = SubjectState("ann", "trial", None, DEPLOY - DAY, DEPLOY + 6 * DAY, plan_version=V1_TABLE.version)
        outcome = new.migrate(stored, DEPLOY)
        assert outcome.moved and outcome.trigger == "plan"
        assert outcome.reason == "plan change: status 'trial' is now 'paid_trial' (renamed_from)"
        assert (outcome.state.status, outcome.state.since, outcome.state.timer_due) == \
            ("paid_trial", DEPLOY - DAY, DEPLOY + 6 * DAY)
        assert new.migrate(outcome.state, DEPLOY) is None        # once

    def test_a_renamed_status_keeps_a_timer_on_the_subscriptions_date(self):
        """A trial whose only timer is `expires_at: trial_end + 2h`: renamed, its running timer stays (it was
        dropped, and every subject in the trial stayed there for good)."""
        anchored = edited(("    expires_after: 7d\n", "    expires_at: trial_end + 2h\n"))
        old, new = table(anchored), table(renamed("trial", "paid_trial", base=anchored))
        trial_end = DEPLOY + 3 * DAY
        stored = SubjectState("ann", "trial", None, DEPLOY - 4 * DAY, trial_end + 7200, plan_version=old.version,
                              trial_end=trial_end)
        moved = new.migrate(stored, DEPLOY)
        assert (moved.state.status, moved.state.timer_due) == ("paid_trial", trial_end + 7200)
        assert advance(new, moved.state, trial_end + 3 * 3600)[0].status == "billing_problem"

    def test_an_old_name_is_decided_and_moved_as_its_new_one(self):
        new = table(renamed("trial", "paid_trial"))
        stored = SubjectState("ann", "trial", None, DEPLOY - DAY, DEPLOY + 6 * DAY)
        assert new.can_process(stored, "requests", 1, 0, DEPLOY).limit == 500
        assert new.apply(stored, StripeEvent("invoice.paid", {"object": "invoice"}), DEPLOY).state.status == "paid"
        assert new.apply(stored, TimerFired(), DEPLOY + 7 * DAY).state.status == "billing_problem"

    @pytest.mark.parametrize("text, status, tier, named", [
        (renamed("trial", "paid_trial"), "trial", None, ("paid_trial", None)),
        (renamed("team", "business"), "paid", "team", ("paid", "business")),
        (edited(*WITHOUT_BILLING_PROBLEM) + RETIRE_BILLING_PROBLEM, "billing_problem", "pro", ("canceled", "pro")),
    ])
    def test_a_decision_on_an_old_name_names_what_decided_it(self, text, status, tier, named):
        """Between a deploy's swap and the moving of stored subjects, a check decided by the new name's rule
        answered the stored name beside it (a status or tier the running plan has not)."""
        new = table(text)
        stored = SubjectState("ann", status, tier, DEPLOY - DAY)
        for decision in (new.can_process(stored, "requests", 1, 0, DEPLOY),
                         new.consume(stored, "requests", 1, 0, DEPLOY)[0]):
            assert (decision.status, decision.tier) == named
            assert decision.rule == new.can_process(new.named(stored, DEPLOY), "requests", 1, 0, DEPLOY).rule

    def test_a_retired_status_enters_its_target(self):
        new = table(edited(*WITHOUT_BILLING_PROBLEM) + RETIRE_BILLING_PROBLEM)
        stored = SubjectState("ann", "billing_problem", "pro", DEPLOY - DAY)
        outcome = new.migrate(stored, DEPLOY)
        assert (outcome.before.status, outcome.state.status, outcome.state.since) == \
            ("billing_problem", "canceled", DEPLOY)
        assert "was removed; its subjects go to 'canceled' (retired)" in outcome.reason
        assert outcome.rule.startswith("plans.yaml:")

    def test_a_stranded_status_raises_unknown_status_naming_the_fix(self):
        new = table(edited(*WITHOUT_BILLING_PROBLEM))
        with pytest.raises(UnknownStatus, match="nor mapped by renamed_from or retired"):
            new.migrate(SubjectState("ann", "billing_problem"), DEPLOY)

    def test_a_renamed_tier_keeps_its_quota_not_the_default_tiers(self):
        new = table(renamed("team", "business"))
        stored = subscriber(tier="team")
        assert new.can_process(stored, "requests", 1, 0, DEPLOY).limit == 20000
        outcome = new.migrate(stored, DEPLOY)
        assert (outcome.state.tier, outcome.state.status) == ("business", "paid")
        assert outcome.reason == "plan change: tier 'team' is now 'business' (renamed_from)"

    def test_a_renamed_tier_moves_the_subscriptions_on_it_too(self):
        """Ann follows a pro subscription; an older team one lives on beside it. team is renamed: the subscription's
        tier moves with it, and when the pro one ends Ann takes business, not a name the plan has no more."""
        new = table(renamed("team", "business"))
        subs = (Subscription("sub_team", "active", DEPLOY - 20 * DAY, "team", *PERIOD),
                Subscription("sub_pro", "active", DEPLOY - 5 * DAY, "pro", *PERIOD))
        outcome = new.migrate(subscriber(subscriptions=subs), DEPLOY)
        assert [s.tier for s in outcome.state.subscriptions] == ["business", "pro"]
        assert outcome.state.tier == "pro" and "tier 'team' is now 'business'" in outcome.reason
        assert new.migrate(outcome.state, DEPLOY) is None
        ended = {"id": "sub_pro", "object": "subscription", "status": "canceled", "created": int(DEPLOY - 5 * DAY),
                 "ended_at": int(DEPLOY)}
        deleted = StripeEvent("customer.subscription.deleted", ended, "evt_1", DEPLOY + 1)
        after = new.apply(subscriber(subscriptions=subs), deleted, DEPLOY + 1)
        assert (after.state.status, after.state.tier) == ("paid", "business")

    def test_a_retired_tier_moves_to_its_target(self):
        new = table(edited(*WITHOUT_TEAM) + RETIRE_TEAM)
        outcome = new.migrate(subscriber(tier="team"), DEPLOY)
        assert outcome.state.tier == "pro"
        assert new.can_process(outcome.state, "requests", 1, 0, DEPLOY).limit == 5000


class TestGrandfathering:
    @pytest.mark.parametrize("policy, limit", [("now", 3000), ("at_renewal", 5000), ("never", 5000)])
    def test_a_lowered_quota_mid_period(self, policy, limit):
        new = table(lowered_pro(policy))
        decision = new.can_process(subscriber(), "requests", 1, 4000, DEPLOY + DAY)
        assert decision.limit == limit
        assert decision.allowed is (limit == 5000)
        version, keeps = new.decided_under(subscriber(), DEPLOY + DAY)
        assert version == (new.version if policy == "now" else V1_TABLE.version)
        if policy != "now":
            assert decision.rule.startswith(f"plan {V1_TABLE.version} tiers.pro.quotas.requests, kept by existing")

    @pytest.mark.parametrize("policy, limit", [("at_renewal", 3000), ("never", 5000)])
    def test_after_the_renewal(self, policy, limit):
        new = table(lowered_pro(policy))
        # the period turned over (reported by Stripe or not): at_renewal gives the new quota, never does not
        assert new.can_process(subscriber(), "requests", 1, 0, PERIOD[1] + 1).limit == limit
        renewed = subscriber(period=(PERIOD[1], PERIOD[1] + 30 * DAY))
        assert new.can_process(renewed, "requests", 1, 0, PERIOD[1] + 1).limit == limit

    def test_a_later_deploy_of_something_else_leaves_the_renewed_on_the_new_quota(self):
        """v2 lowers pro's quota at_renewal; Ann renews after it and gets the new quota. A later deploy (v3, the
        trial made longer) must not put her back on v1's: her version stopped being active when v2 came, not
        when v3 did (she got 5000 again until her next renewal)."""
        v2_text = lowered_pro("at_renewal")
        v2 = table(v2_text)
        renewal = PERIOD[1]
        ann = subscriber(period=(renewal, renewal + 30 * DAY))
        assert v2.can_process(ann, "requests", 1, 0, renewal + DAY).limit == 3000
        v3_deployed = renewal + 5 * DAY
        v3 = compile_plan(plan(edited(("expires_after: 7d", "expires_after: 14d"), base=v2_text)),
                          {V1_TABLE.version: plan(V1), v2.version: plan(v2_text)}, v3_deployed,
                          {V1_TABLE.version: DEPLOY, v2.version: v3_deployed})
        assert v3.can_process(ann, "requests", 1, 0, v3_deployed + DAY).limit == 3000
        # one who has not renewed since v2 came (a yearly period) is still kept on v1's
        yearly = subscriber(period=(DEPLOY - 10 * DAY, DEPLOY + 355 * DAY))
        assert v3.can_process(yearly, "requests", 1, 0, v3_deployed + DAY).limit == 5000

    def test_new_subjects_and_current_subjects_get_the_new_quota(self):
        new = table(lowered_pro("never"))
        assert new.can_process(subscriber(version=new.version), "requests", 1, 0, DEPLOY).limit == 3000
        assert new.can_process(subscriber(version=""), "requests", 1, 0, DEPLOY).limit == 3000
        fresh = new.initial_state("bob", DEPLOY)
        assert fresh.plan_version == new.version

    def test_a_kept_subject_keeps_its_version_through_grace_and_back(self):
        new = table(lowered_pro("never"))
        kept = subscriber()
        failed = new.apply(kept, StripeEvent("invoice.payment_failed", {"object": "invoice"}), DEPLOY)
        assert (failed.state.status, failed.state.plan_version) == ("grace", V1_TABLE.version)
        assert new.can_process(failed.state, "requests", 1, 0, DEPLOY).limit == 5000
        paid = new.apply(failed.state, StripeEvent("invoice.paid", {"object": "invoice", "status": "paid"}), DEPLOY)
        assert paid.state.plan_version == V1_TABLE.version

    def test_subscribing_anew_or_changing_tier_takes_the_quota_as_it_is(self):
        new = table(lowered_pro("never"))
        free = subscriber(status="free", tier=None, period=(None, None))
        trial = new.apply(free, StripeEvent("checkout.session.completed", {"object": "checkout.session"}), DEPLOY)
        assert trial.state.plan_version == new.version
        upgrade = {"object": "subscription", "status": "active",
                   "items": {"data": [{"price": {"id": "price_team"}}]}}
        moved = new.apply(subscriber(), StripeEvent("customer.subscription.updated", upgrade), DEPLOY)
        assert (moved.state.tier, moved.state.plan_version) == ("team", new.version)

    def test_a_subject_whose_status_takes_no_tier_quota_is_kept_on_nothing(self):
        """A free subject stored under the older version (no tier: the plan's default tier is its tier) is not one
        of the tier's existing subscribers: it is decided by this version, not shown as kept, and an upgrade
        moves (and audits) nothing of it."""
        new = table(lowered_pro("never"))
        free = subscriber(status="free", tier=None, period=(None, None))
        assert new.tier_of(free) == "pro"
        assert new.decided_under(free, DEPLOY) == (new.version, None)
        assert new.upgrade(free, DEPLOY) is None
        assert new.decided_under(subscriber(tier=None), DEPLOY) == (V1_TABLE.version, new.decided_under(
            subscriber(), DEPLOY)[1])       # paid on the default tier: kept, as a pro subscriber is

    def test_upgrade_moves_a_kept_subject_to_the_active_version(self):
        new = table(lowered_pro("never"))
        outcome = new.upgrade(subscriber(), DEPLOY)
        assert outcome.trigger == "plan" and outcome.moved
        assert outcome.state.plan_version == new.version
        assert new.can_process(outcome.state, "requests", 1, 0, DEPLOY).limit == 3000
        assert new.upgrade(outcome.state, DEPLOY) is None

    def test_a_tier_whose_quotas_did_not_change_keeps_nothing(self):
        new = table(edited(("price_team]", "price_team, price_team_yearly]")))
        assert new.kept_versions == ()
        with_policy = table(lowered_pro("never").replace("limit: 3000", "limit: 5000"))
        assert with_policy.kept_versions == ()

    def test_a_meter_the_older_tier_had_no_quota_for_takes_todays(self):
        text = lowered_pro("never").replace("    fail_mode: open\n", "    fail_mode: open\n  images: {}\n").replace(
            "      requests: {limit: 3000, per: billing_period}\n",
            "      requests: {limit: 3000, per: billing_period}\n      images: {limit: 40, per: billing_period}\n").replace(
            "      requests: {limit: 20000, per: billing_period}\n",
            "      requests: {limit: 20000, per: billing_period}\n      images: unlimited\n").replace(
            "  paid:\n    paying: true\n    quotas:\n      requests: tier\n",
            "  paid:\n    paying: true\n    quotas:\n      requests: tier\n      images: tier\n")
        new = table(text)
        assert new.can_process(subscriber(), "requests", 1, 0, DEPLOY).limit == 5000
        assert new.can_process(subscriber(), "images", 1, 0, DEPLOY).limit == 40

    def test_timers_of_a_kept_subject(self):
        new = table(lowered_pro("at_renewal"))
        grace = SubjectState("ann", "grace", "pro", DEPLOY - DAY, DEPLOY + DAY, *PERIOD, V1_TABLE.version)
        state, fired = advance(new, grace, DEPLOY + 2 * DAY)
        assert [o.state.status for o in fired] == ["billing_problem"]
        assert state.plan_version == new.version      # billing_problem takes no tier quota

    def test_admin_override_keeps_a_kept_subject_between_tier_statuses(self):
        new = table(lowered_pro("never"))
        assert new.override(subscriber(), "grace", DEPLOY).state.plan_version == V1_TABLE.version
        assert new.apply(subscriber(), AdminAction("close_account"), DEPLOY).state.plan_version == new.version


def renewal(start: float, price: str = "price_pro") -> StripeEvent:
    """Stripe's report of a renewal: the subscription's next period, from `start`."""
    return StripeEvent("customer.subscription.updated", {
        "object": "subscription", "status": "active", "current_period_start": start,
        "current_period_end": start + 30 * DAY, "items": {"data": [{"price": {"id": price}}]}})


class TestThirdDeploy:
    """A subscriber's version after v2 came, as a third deploy (v3) finds it. Renewed under v2 (at_renewal), Ann is
    v2's subscriber: her stored version said v1, and v3 decided her by v1's tier quota."""

    V2 = lowered_pro("at_renewal")
    RENEWAL = PERIOD[1]
    V3_DEPLOYED = PERIOD[1] + 5 * DAY

    def v3(self, text: str, v2_text: str | None = None) -> StateTable:
        v2_text = v2_text or self.V2
        return compile_plan(plan(text), {V1_TABLE.version: plan(V1), version_of(plan(v2_text)): plan(v2_text)},
                            self.V3_DEPLOYED, {V1_TABLE.version: DEPLOY, version_of(plan(v2_text)): self.V3_DEPLOYED})

    def renewed_under_v2(self) -> SubjectState:
        v2 = table(self.V2)
        outcome = v2.apply(subscriber(), renewal(self.RENEWAL), self.RENEWAL)
        assert v2.can_process(outcome.state, "requests", 1, 0, self.RENEWAL + DAY).limit == 3000
        return outcome.state

    def test_the_renewal_records_the_version_deciding_the_subscriber(self):
        v2 = table(self.V2)
        assert self.renewed_under_v2().plan_version == v2.version
        # not renewed yet (a payment in the kept period): still v1's subscriber
        paid = v2.apply(subscriber(), StripeEvent("invoice.paid", {"object": "invoice", "status": "paid"}),
                        DEPLOY + DAY)
        assert paid.state.plan_version == V1_TABLE.version

    def test_a_third_deploy_keeping_quotas_for_good_keeps_v2s_not_v1s(self):
        """v3 lowers pro again, `never`: Ann keeps what she had when it came, v2's 3000 (she got v1's 5000 back)."""
        v3 = self.v3(lowered_pro("never", 2000))
        decision = v3.can_process(self.renewed_under_v2(), "requests", 1, 0, self.V3_DEPLOYED + DAY)
        assert decision.limit == 3000, decision.rule

    def test_a_third_deploy_at_renewal_waits_for_the_next_renewal(self):
        """v3 lowers pro again, at_renewal: Ann keeps v2's 3000 until her next renewal, then 2000 (she got v3's
        2000 at once: renewed since v1 stopped being active)."""
        v3 = self.v3(lowered_pro("at_renewal", 2000))
        ann = self.renewed_under_v2()
        assert v3.can_process(ann, "requests", 1, 0, self.V3_DEPLOYED + DAY).limit == 3000
        assert v3.can_process(ann, "requests", 1, 0, self.RENEWAL + 30 * DAY).limit == 2000
        again = v3.apply(ann, renewal(self.RENEWAL + 30 * DAY), self.RENEWAL + 30 * DAY).state
        assert (again.plan_version, v3.can_process(again, "requests", 1, 0, self.RENEWAL + 31 * DAY).limit) == \
            (v3.version, 2000)

    def test_a_subscriber_v2_decides_at_once_is_v2s(self):
        """v2 lowers pro `now`: written under it, Ann is its subscriber. v3 lowering pro again, never, keeps her on
        v2's 3000 (she got v1's 5000 back)."""
        v2_text = lowered_pro("now")
        v2 = table(v2_text)
        paid = v2.apply(subscriber(), StripeEvent("invoice.paid", {"object": "invoice", "status": "paid"}),
                        DEPLOY + DAY).state
        assert paid.plan_version == v2.version
        v3 = self.v3(lowered_pro("never", 2000), v2_text)
        assert v3.can_process(paid, "requests", 1, 0, self.V3_DEPLOYED + DAY).limit == 3000

    def test_a_tier_renamed_twice_keeps_its_subscribers_quota(self):
        """pro becomes pro2 (v2, lowered at_renewal), then pro3 (v3, a rename only; each plan maps one step back).
        Ann, on v1 and not renewed since, keeps v1's 5000 until her renewal (v3 gave her 3000 at once)."""
        v2 = renamed("pro", "pro2", base=self.V2)
        v3_text = renamed("pro2", "pro3", base=v2).replace("    renamed_from: [pro]\n", "")
        assert "renamed_from: [pro2]" in v3_text and "renamed_from: [pro]" not in v3_text
        ann = subscriber(tier="pro3", period=(DEPLOY - 10 * DAY, DEPLOY + 355 * DAY))     # a yearly period
        v3 = self.v3(v3_text, v2)
        decision = v3.can_process(ann, "requests", 1, 0, self.V3_DEPLOYED + DAY)
        assert decision.limit == 5000, decision.rule
        assert v3.decided_under(ann, self.V3_DEPLOYED + DAY) == (V1_TABLE.version, ExistingSubscribers.AT_RENEWAL)
        assert v3.can_process(ann, "requests", 1, 0, DEPLOY + 355 * DAY).limit == 3000

    def test_a_table_that_does_not_know_a_subscribers_version_leaves_it_as_it_is(self):
        """A webhook reaching a node that has not followed v3's deploy yet: v2's table knows nothing of v3, and
        the stamp wrote Ann, a v3 subscriber (pro 2000, never), down as v2's. Once every node ran v3 she was v2's
        subscriber kept for good: 3000 for a subscription bought at 2000 (found by a reviewer)."""
        v2_text, v3_text = self.V2, lowered_pro("never", 2000)
        v3_version = version_of(plan(v3_text))
        v2 = compile_plan(plan(v2_text), {V1_TABLE.version: plan(V1)}, DEPLOY)
        ann = subscriber(version=v3_version, period=(self.V3_DEPLOYED + DAY, self.V3_DEPLOYED + 31 * DAY))
        paid = StripeEvent("invoice.paid", {"object": "invoice", "status": "paid"})
        written = v2.apply(ann, paid, self.V3_DEPLOYED + 2 * DAY).state
        assert written.plan_version == v3_version
        v3 = compile_plan(plan(v3_text), {V1_TABLE.version: plan(V1), v2.version: plan(v2_text),
                                          v3_version: plan(v3_text)},
                          self.V3_DEPLOYED, {V1_TABLE.version: DEPLOY, v2.version: self.V3_DEPLOYED})
        later = self.V3_DEPLOYED + 100 * DAY
        assert (v3.can_process(written, "requests", 1, 0, later).limit, v3.decided_under(written, later)[1]) == \
            (2000, None)


class TestScenarioStep:
    """`- plan: FILE` in a scenario: the plan changes mid-story, at that step's time."""

    STORY = """\
name: a rename and a lowered quota mid-story
start: "2026-03-01T08:00:00Z"
subject: ann
steps:
  - stripe: customer.subscription.created
    object: {{status: active}}
    price: price_pro
    period: {{start: "2026-03-01T08:00:00Z", end: "2026-04-01T08:00:00Z"}}
  - consume: 4000
  - plan: {plan}
    expect: {expect}
  - until: "2026-04-01T08:00:00Z"
    expect: {{kept: null, limit: 3000}}
"""

    def run(self, tmp_path, plan_text: str, expect: str, plan: str = "v2.yaml"):
        from plangate.engine._playback import play
        from plangate.engine._scenario import parse_scenario

        (tmp_path / "v2.yaml").write_text(plan_text, encoding="utf-8")
        story = tmp_path / "story.yaml"
        story.write_text(self.STORY.format(plan=plan, expect=expect), encoding="utf-8")
        return play(V1_TABLE, parse_scenario(story.read_text(), str(story), V1_TABLE))

    def test_kept_until_renewal(self, tmp_path):
        result = self.run(tmp_path, lowered_pro("at_renewal"), "{moved: false, kept: at_renewal, limit: 5000, used: 4000}")
        assert result.passed, result.failure.describe("story")

    def test_a_renamed_status_moves_the_subject_and_later_steps_use_the_new_names(self, tmp_path):
        text = renamed("paid", "paying", base=lowered_pro("never"))
        story = self.STORY.replace("{kept: null, limit: 3000}", "{status: paying, kept: never, limit: 5000}")
        self.STORY = story
        result = self.run(tmp_path, text, "{status: paying, moved: true, kept: never}")
        assert result.passed, result.failure.describe("story")

    def test_a_missing_or_broken_plan_is_a_located_problem(self, tmp_path):
        from plangate.engine._scenario import ScenarioError

        with pytest.raises(ScenarioError, match=r"story.yaml:10:11: plan: .*nope.yaml: no such file"):
            self.run(tmp_path, V1, "{moved: false}", plan="nope.yaml")
        with pytest.raises(ScenarioError, match="has errors; fix them first"):
            self.run(tmp_path, "version: 1\nmeters: {}\n", "{moved: false}")


# v1 with credits of pro's meter each billing period; and edits of them with each existing_subscribers choice.
PRO_LIMIT = "      requests: {limit: 5000, per: billing_period}\n"
CREDITED = edited((PRO_LIMIT, PRO_LIMIT + "    credits:\n      requests: {amount: 100, per: billing_period, rollover: 50}\n"))
CREDITED_TABLE = compile_plan(plan(CREDITED))


def credited(policy: str, credits: str = "{amount: 300, per: billing_period, rollover: 50}") -> StateTable:
    """The credited plan with pro's credits changed (`credits`: its map, or "" for none), deployed over it."""
    line = "      requests: {amount: 100, per: billing_period, rollover: 50}\n"
    text = edited(("    credits:\n" + line, (f"    credits:\n      requests: {credits}\n" if credits else "")
                   + f"    existing_subscribers: {policy}\n"), base=CREDITED)
    return compile_plan(plan(text), {CREDITED_TABLE.version: plan(CREDITED)}, DEPLOY)


class TestKeptCredits:
    """A tier's credits each window are part of what its existing subscribers keep: a subscriber kept on an
    older version (at_renewal until its renewal, never until an admin upgrades it) gets that version's amount
    and rollover, whether the new plan raised, lowered or removed them."""

    @staticmethod
    def granted(table: StateTable, state: SubjectState, now: float, grants=()) -> list[int]:
        return [g.amount for g in table.tier_grants(state, "requests", now, list(grants)).new]

    @pytest.mark.parametrize("policy, kept", [("now", 300), ("at_renewal", 100), ("never", 100)])
    def test_a_raised_amount_mid_period(self, policy, kept):
        new = credited(policy)
        ann = subscriber(version=CREDITED_TABLE.version)
        assert self.granted(new, ann, DEPLOY + DAY) == [kept]
        assert new.decided_under(ann, DEPLOY + DAY)[1] is (None if policy == "now" else ExistingSubscribers(policy))
        assert self.granted(new, subscriber(version=new.version), DEPLOY + DAY) == [300]     # new subscribers

    @pytest.mark.parametrize("policy, after", [("at_renewal", [300, 50]), ("never", [100, 50])])
    def test_after_the_renewal(self, policy, after):
        new = credited(policy)
        ann = subscriber(version=CREDITED_TABLE.version)
        first = new.tier_grants(ann, "requests", DEPLOY + DAY, []).new       # the kept window's 100, unspent
        renewed = ann.with_(period_start=PERIOD[1], period_end=PERIOD[1] + 30 * DAY)
        assert self.granted(new, renewed, PERIOD[1] + DAY, first) == after
        upgraded = new.upgrade(ann, DEPLOY + DAY)
        if policy == "never":
            assert self.granted(new, upgraded.state.with_(period_start=PERIOD[1], period_end=PERIOD[1] + 30 * DAY),
                                PERIOD[1] + DAY, first) == [300, 50]

    def test_a_lowered_or_removed_grant_is_kept_until_the_renewal(self):
        ann = subscriber(version=CREDITED_TABLE.version)
        lowered = credited("at_renewal", "{amount: 40, per: billing_period}")
        assert self.granted(lowered, ann, DEPLOY + DAY) == [100]
        removed = credited("at_renewal", "")
        assert removed.has_credits("requests") and removed.tier_grants_apply("requests")
        assert self.granted(removed, ann, DEPLOY + DAY) == [100]
        assert removed.can_process(ann, "requests", 10, 5000, DEPLOY + DAY, 100).allowed    # spent past the limit
        renewed = ann.with_(period_start=PERIOD[1], period_end=PERIOD[1] + 30 * DAY)
        assert self.granted(removed, renewed, PERIOD[1] + DAY) == []
        assert self.granted(removed, subscriber(version=removed.version), DEPLOY + DAY) == []

    def test_a_tier_whose_credits_did_not_change_keeps_nothing(self):
        assert credited("never", "{amount: 100, per: billing_period, rollover: 50}").kept_versions == ()
