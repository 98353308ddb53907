"""Entitlements beyond one quota: features, seats and traits, add-ons, credits and overage, minute/hour windows and
windows anchored to the billing anniversary (issue 19), decided by the pure table."""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime

import pytest

from plangate.engine import AbsurdPurchase, Reason, StripeEvent, SubjectState, UsageBook, compile_file
from plangate.engine._credits import (Grant, GrantSource, Spendable, balance, cancelled_at, last_window,
                                      period_grants, spend, windowed)
from plangate.engine._entitlements import UnknownFeature, billable
from plangate.engine._subscriptions import Subscription
from plangate.engine._windows import FixedClock, Span, anniversary_span
from plangate.policy import Window

from .conftest import REPO


def ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@pytest.fixture(scope="module")
def saas():
    return compile_file(REPO / "examples" / "saas" / "plans.yaml")


@pytest.fixture(scope="module")
def ai():
    return compile_file(REPO / "examples" / "ai-api" / "plans.yaml")


@pytest.fixture(scope="module")
def b2b():
    return compile_file(REPO / "examples" / "b2b" / "plans.yaml")


NOW = ts("2027-02-10T09:00:30Z")


def subscribed(table, tier_price: str, quantity: int = 1, extra=(), ident: str = "sub_1", status: str = "active"):
    items = [{"price": {"id": tier_price}, "quantity": quantity, "current_period_start": int(ts("2027-02-10T09:00:00Z")),
              "current_period_end": int(ts("2027-03-10T09:00:00Z"))}]
    items += [{"price": {"id": p}, "quantity": q} for p, q in extra]
    return {"object": "subscription", "id": ident, "customer": "cus_1", "status": status, "items": {"data": items}}


def fold(table, *objects, subject="ws"):
    state = table.initial_state(subject, NOW - 30)
    for i, obj in enumerate(objects):
        kind = "customer.subscription.deleted" if obj.get("status") == "canceled" else "customer.subscription.created"
        state = table.apply(state, StripeEvent(kind, obj, f"evt_{i}", NOW - 20 + i), NOW - 20 + i).state
    return state


class TestFeatures:
    def test_free_status_grants_nothing_and_says_not_entitled(self, saas):
        d = saas.feature(saas.initial_state("ws", NOW), "sso", NOW)
        assert (d.allowed, d.reason, d.feature, d.meter) == (False, Reason.NOT_ENTITLED, "sso", None)
        assert "statuses.free" in d.rule

    def test_tier_features_by_tier(self, saas):
        team = fold(saas, subscribed(saas, "price_team_seat_monthly", 5))
        pro = fold(saas, subscribed(saas, "price_pro_monthly"))
        assert saas.feature(team, "sso", NOW).allowed
        assert "tiers.team.features" in saas.feature(team, "sso", NOW).rule
        assert not saas.feature(pro, "sso", NOW).allowed
        assert saas.feature(pro, "custom_domain", NOW).allowed

    def test_a_status_that_denies_access_answers_status_denies(self, b2b):
        state = b2b.initial_state("org", NOW).with_(status="suspended")
        assert b2b.feature(state, "sso", NOW).reason is Reason.STATUS_DENIES

    def test_an_unknown_feature_raises(self, saas):
        with pytest.raises(UnknownFeature):
            saas.feature(saas.initial_state("ws", NOW), "teleport", NOW)

    def test_features_are_a_lookup_in_the_compiled_table(self, saas):
        assert saas.features.granted["paid"]["team"]["sso"].startswith(str(REPO / "examples/saas/plans.yaml")) or \
            "tiers.team.features" in saas.features.granted["paid"]["team"]["sso"]
        assert "sso" not in saas.features.granted["paid"]["pro"]


class TestSeatsAndTraits:
    def test_the_limit_is_per_unit_of_the_items_quantity(self, saas):
        state = fold(saas, subscribed(saas, "price_team_seat_monthly", 5))
        assert state.quantity == 5
        assert saas.can_process(state, "exports", 1, 0, NOW).limit == 500
        assert saas.can_process(state, "api_calls", 1, 0, NOW).limit == 300

    def test_an_update_with_a_new_quantity_changes_the_limit(self, saas):
        state = fold(saas, subscribed(saas, "price_team_seat_monthly", 5))
        state = saas.apply(state, StripeEvent("customer.subscription.updated",
                                              subscribed(saas, "price_team_seat_monthly", 2), "evt_u", NOW), NOW).state
        assert saas.can_process(state, "exports", 1, 0, NOW).limit == 200

    def test_a_trait_scales_the_limit_and_one_unit_when_unset(self, b2b):
        state = b2b.initial_state("org", NOW).with_(status="customer", tier="business")
        assert b2b.can_process(state, "documents", 1, 0, NOW).limit == 50
        assert b2b.can_process(state.with_(traits=(("members", 12),)), "documents", 1, 0, NOW).limit == 600
        assert b2b.can_process(state.with_(traits=(("members", 0),)), "documents", 1, 0, NOW).limit == 0


class TestAddons:
    def test_an_extra_item_adds_its_features_and_quota(self, saas):
        state = fold(saas, subscribed(saas, "price_pro_monthly", 1, [("price_audit_log_monthly", 1),
                                                                     ("price_export_pack_monthly", 3)]))
        assert state.addons == (("audit_log_addon", 1), ("export_pack", 3))
        assert saas.feature(state, "audit_log", NOW).allowed
        assert saas.can_process(state, "exports", 1, 0, NOW).limit == 200 + 3 * 500

    def test_an_addon_subscription_ends_on_its_own(self, saas):
        main = subscribed(saas, "price_pro_monthly")
        addon = {"object": "subscription", "id": "sub_addon", "customer": "cus_1", "status": "active",
                 "items": {"data": [{"price": {"id": "price_export_pack_monthly"}, "quantity": 1}]}}
        state = fold(saas, main, addon)
        assert (state.status, state.follows.id, state.addons) == ("paid", "sub_1", (("export_pack", 1),))
        state = fold(saas, main, addon, dict(addon, status="canceled"))
        assert (state.status, state.addons) == ("paid", ())
        assert saas.can_process(state, "exports", 1, 0, NOW).limit == 200

    def export_pack(self, status: str = "active", ident: str = "sub_addon") -> dict:
        """A subscription of its own buying one export pack, in Stripe's current shape (its period on the item)."""
        return {"object": "subscription", "id": ident, "customer": "cus_1", "status": status,
                "metadata": {"workspace": "ws"},
                "items": {"data": [{"price": {"id": "price_export_pack_monthly"}, "quantity": 1,
                                    "current_period_start": int(ts("2027-02-10T09:00:00Z")),
                                    "current_period_end": int(ts("2027-03-10T09:00:00Z"))}]}}

    def test_an_addon_bought_alone_makes_no_one_paid_nor_gives_a_tier(self, saas):
        """The default tier is for a price the plan does not know, not for an add-on's: a free workspace that buys
        only an export pack stays free, with free's limits and features, and follows no subscription."""
        state = saas.initial_state("ws", NOW - 30)
        outcome = saas.apply(state, StripeEvent("customer.subscription.created", self.export_pack(), "evt_1", NOW - 20),
                             NOW - 20)
        state = outcome.state
        assert not outcome.moved and outcome.other_subscription
        assert "follows no subscription" in outcome.reason
        assert (state.status, state.tier, state.follows, state.period_end) == ("free", None, None, None)
        assert state.addons == (("export_pack", 1),)        # bought, and counted once a tier's status takes it
        assert saas.can_process(state, "exports", 1, 0, NOW).limit == 10
        assert saas.can_process(state, "api_calls", 1, 0, NOW).limit == 10
        assert not saas.feature(state, "custom_domain", NOW).allowed

    def test_an_addon_bought_first_counts_once_a_plan_is_bought_and_not_after_it_ends(self, saas):
        """Two subscriptions on one customer, the add-on's first: the pro subscription is followed when it comes
        and the pack adds to pro's quota; when pro ends the pack alone does not keep the workspace paid."""
        pro = subscribed(saas, "price_pro_monthly")
        state = fold(saas, self.export_pack(), pro)
        assert (state.status, state.tier, state.follows.id) == ("paid", "pro", "sub_1")
        assert saas.can_process(state, "exports", 1, 0, NOW).limit == 200 + 500
        state = fold(saas, self.export_pack(), pro, dict(pro, status="canceled"))
        assert (state.status, state.follows.id, state.addons) == ("ended", "sub_1", (("export_pack", 1),))
        assert saas.can_process(state, "exports", 1, 0, NOW).limit == 10

    def test_an_addon_alone_after_the_plan_ended_does_not_bring_it_back(self, saas):
        pro = subscribed(saas, "price_pro_monthly")
        state = fold(saas, pro, dict(pro, status="canceled"), self.export_pack(ident="sub_later"))
        assert (state.status, state.follows.id) == ("ended", "sub_1")
        assert saas.can_process(state, "exports", 1, 0, NOW).limit == 10

    def test_addons_count_only_where_the_status_takes_the_tier(self, saas):
        state = fold(saas, subscribed(saas, "price_pro_monthly", 1, [("price_export_pack_monthly", 1)]))
        free = state.with_(status="ended")
        assert saas.can_process(free, "exports", 1, 0, NOW).limit == 10
        assert not saas.feature(free.with_(addons=(("audit_log_addon", 1),)), "audit_log", NOW).allowed

    def test_a_past_due_addon_still_counts_an_unpaid_one_does_not(self, saas):
        addon = {"object": "subscription", "id": "sub_addon", "customer": "cus_1",
                 "items": {"data": [{"price": {"id": "price_audit_log_monthly"}, "quantity": 1}]}}
        base = subscribed(saas, "price_pro_monthly")
        assert fold(saas, base, dict(addon, status="past_due")).addons == (("audit_log_addon", 1),)
        assert fold(saas, base, dict(addon, status="unpaid")).addons == ()


class TestWindows:
    def test_minute_and_hour_windows_and_exact_retry_after(self, write_plan):
        table = write_plan("""
version: 1
meters: {calls: {}, jobs: {}}
statuses:
  free:
    initial: true
    quotas: {calls: {limit: 2, per: minute}, jobs: {limit: 1, per: hour}}
  gone: {access: deny, terminal: true}
transitions: [{from: free, on: "admin:close", to: gone}]
""")
        state = table.initial_state("s", NOW)
        d = table.can_process(state, "calls", 1, 2, NOW)
        assert (d.allowed, d.retry_after, d.window_start, d.resets_at) == (False, 30, NOW - 30, NOW + 30)
        d = table.can_process(state, "jobs", 1, 1, NOW + 0.25)
        assert d.retry_after == 3600 - 30 - 0 and d.resets_at - d.window_start == 3600

    def test_fixed_clock_tiles_the_line(self):
        clock = FixedClock(60)
        assert clock.span(119.999) == Span(60, 120) and clock.span(120) == Span(120, 180)

    @pytest.mark.parametrize("anchor, now, start, end", [
        ("2027-01-31T10:00:00Z", "2027-02-15T00:00:00Z", "2027-01-31T10:00:00Z", "2027-02-28T10:00:00Z"),
        ("2027-01-31T10:00:00Z", "2027-02-28T10:00:00Z", "2027-02-28T10:00:00Z", "2027-03-31T10:00:00Z"),
        ("2027-01-31T10:00:00Z", "2028-02-29T12:00:00Z", "2028-02-29T10:00:00Z", "2028-03-31T10:00:00Z"),
        ("2027-03-15T00:00:00Z", "2027-03-14T23:59:59Z", "2027-02-15T00:00:00Z", "2027-03-15T00:00:00Z"),
        ("2026-05-20T08:30:00Z", "2027-05-20T08:29:59Z", "2027-04-20T08:30:00Z", "2027-05-20T08:30:00Z"),
    ])
    def test_months_from_the_anniversary_clamp_to_the_months_last_day(self, anchor, now, start, end):
        assert anniversary_span(Window.MONTH, ts(now), ts(anchor)) == Span(int(ts(start)), int(ts(end)))

    @pytest.mark.parametrize("period_start, period_end, now, start, end", [
        # anchored on the 31st: the period that starts on Feb 28 ends on Mar 31, and so does its month
        ("2027-02-28T10:00:00Z", "2027-03-31T10:00:00Z", "2027-03-28T10:00:01Z", "2027-02-28T10:00:00Z",
         "2027-03-31T10:00:00Z"),
        ("2027-04-30T10:00:00Z", "2027-05-31T10:00:00Z", "2027-05-30T11:00:00Z", "2027-04-30T10:00:00Z",
         "2027-05-31T10:00:00Z"),
        # anchored on Feb 29: a yearly period's months fall on the 29th
        ("2027-02-28T10:00:00Z", "2028-02-29T10:00:00Z", "2027-03-28T12:00:00Z", "2027-02-28T10:00:00Z",
         "2027-03-29T10:00:00Z"),
        # a period on its own day (the 28th, the 15th) keeps it
        ("2027-02-28T10:00:00Z", "2027-03-28T10:00:00Z", "2027-03-28T10:00:01Z", "2027-03-28T10:00:00Z",
         "2027-04-28T10:00:00Z"),
        ("2027-01-15T00:00:00Z", "2027-01-29T00:00:00Z", "2027-01-20T00:00:00Z", "2027-01-15T00:00:00Z",
         "2027-02-15T00:00:00Z"),
    ])
    def test_months_follow_the_billing_anchor_a_period_starting_on_a_months_last_day_hides(
            self, period_start, period_end, now, start, end):
        """Stripe bills a subscription anchored on the 31st on Feb 28 and then on Mar 31: the period's start is
        clamped, its end is not. The allowance's month follows the anchor's day, not the clamped start (it reset
        on Mar 28, three days before the renewal)."""
        span = anniversary_span(Window.MONTH, ts(now), ts(period_start), ts(period_end))
        assert span == Span(int(ts(start)), int(ts(end)))

    def test_days_and_weeks_from_the_anniversary(self):
        anchor = ts("2027-01-31T10:00:00Z")
        assert anniversary_span(Window.DAY, anchor + 86400 * 3 + 5, anchor).start == anchor + 86400 * 3
        assert anniversary_span(Window.WEEK, anchor - 1, anchor) == Span(int(anchor) - 7 * 86400, int(anchor))

    def test_an_anchored_quota_without_a_period_counts_by_the_calendar(self, ai):
        state = ai.initial_state("a", NOW).with_(status="subscribed", tier="scale")
        d = ai.can_process(state, "tokens", 1, 0, NOW)
        assert (d.window_start, d.resets_at) == (ts("2027-02-01T00:00:00Z"), ts("2027-03-01T00:00:00Z"))


class TestCreditsAndOverage:
    def grants(self, *specs):
        return [Grant(f"g{i}", "tokens", amount, remaining, priority, created, expires, GrantSource.ADMIN)
                for i, (amount, remaining, priority, created, expires) in enumerate(specs)]

    def test_credits_are_spent_once_the_allowance_is_used_up(self, ai):
        state = ai.initial_state("a", NOW)
        d, after = ai.consume(state, "tokens", 30, 49990, NOW, balance=100)
        assert (d.allowed, d.credits_used, d.credits, d.overage, after, d.remaining) == (True, 20, 80, 0, 50000, 0)

    def test_not_enough_credits_and_no_overage_refuses_and_spends_nothing(self, ai):
        d, after = ai.consume(ai.initial_state("a", NOW), "tokens", 30, 49990, NOW, balance=5)
        assert (d.allowed, d.reason, d.credits, d.credits_used, after) == (False, Reason.QUOTA_EXHAUSTED, 5, 0, 49990)

    def test_overage_after_credits(self, ai):
        state = fold(ai, subscribed(ai, "price_scale_yearly"))
        limit = ai.can_process(state, "tokens", 1, 0, NOW).limit
        d, after = ai.consume(state, "tokens", 100, limit - 10, NOW, balance=50)
        assert (d.allowed, d.credits_used, d.overage, after) == (True, 50, 40, limit + 40)

    def test_overage_up_to_a_cap_per_window(self, write_plan):
        table = write_plan("""
version: 1
meters: {tokens: {stripe_meter: tokens_over}}
statuses:
  free:
    initial: true
    quotas: {tokens: {limit: 100, per: day, overage: {up_to: 50}}}
  gone: {access: deny, terminal: true}
transitions: [{from: free, on: "admin:close", to: gone}]
""")
        state = table.initial_state("s", NOW)
        assert table.can_process(state, "tokens", 50, 100, NOW).overage == 50
        d = table.can_process(state, "tokens", 51, 100, NOW)
        assert (d.allowed, d.reason, d.retry_after) == (False, Reason.QUOTA_EXHAUSTED, 14 * 3600 + 59 * 60 + 30)
        assert table.can_process(state, "tokens", 10, 140, NOW).allowed
        assert not table.can_process(state, "tokens", 11, 140, NOW).allowed

    def test_grants_are_spent_by_priority_then_expiry_then_age(self):
        grants = self.grants((10, 10, 10, 1.0, None), (10, 10, 5, 2.0, None), (10, 10, 5, 3.0, 500.0),
                             (10, 10, 5, 0.5, 50.0))
        after, spent = spend(grants, "tokens", 25, 100.0)
        left = {g.id: g.remaining for g in after}
        assert spent == 25 and left == {"g0": 5, "g1": 0, "g2": 0, "g3": 10}     # g3 expired at 50

    def test_balance_leaves_out_spent_expired_forfeited_and_later_grants(self):
        grants = self.grants((10, 0, 1, 1.0, None), (10, 7, 1, 1.0, 299.0), (10, 4, 1, 200.0, None))
        assert balance(grants, "tokens", 250.0) == 11
        assert balance(grants, "tokens", 300.0) == 4
        assert balance(grants, "tokens", 250.0, Spendable(not_before=150.0)) == 4
        assert balance(grants, "tokens", 50.0) == 11      # an admin's or a pack's grant, made as it was given
        # A tier's grant not before its window: a request of a window's last moments and the next window's grant.
        tier = [replace(g, source=GrantSource.PERIOD) if g.id == "g2" else g for g in grants]
        assert balance(tier, "tokens", 50.0) == 7
        assert spend(tier, "tokens", 10, 50.0)[1] == 7

    def test_a_cancellation_is_when_no_tier_subscription_stays_live(self):
        old = Subscription("sub_a", "canceled", 10.0, "pro", ended_at=100.0)
        new = Subscription("sub_b", "active", 50.0, "pro")
        assert cancelled_at((old,)) == 100.0
        assert cancelled_at((old, new)) is None          # re-subscribed during dunning: no cancellation
        assert cancelled_at((old, Subscription("sub_c", "active", 150.0, "pro"))) == 100.0

    def test_a_subscription_that_never_served_is_no_cancellation_and_covers_none(self):
        """A first payment never made (3-D Secure abandoned): `incomplete`, then `incomplete_expired`. Nothing was
        canceled, and under `on_cancel: forfeit` the packs bought before it were lost."""
        expired = Subscription("sub_x", "incomplete_expired", 10.0, "pro", ended_at=50.0)
        assert cancelled_at((expired,)) is None
        old = Subscription("sub_a", "canceled", 10.0, "pro", ended_at=100.0)
        assert cancelled_at((old, Subscription("sub_b", "incomplete", 90.0, "pro"))) == 100.0
        assert cancelled_at((old, expired)) == 100.0

    def test_tier_grants_end_with_their_window_as_it_is_known_now(self):
        made = period_grants(50, 30, "tokens", lambda t: Span(100, 200), 150.0, None)      # guessed: 100..200
        pack = Grant("cs_1:0", "tokens", 9, 9, 10, 120.0, 500.0, GrantSource.PURCHASE)
        longer, redates = windowed(made + (pack,), "tokens", Span(100, 230))
        assert [g.expires_at for g in longer] == [230, 500.0] and redates == (("period:tokens:100", 230.0),)
        shorter, redates = windowed(made + (pack,), "tokens", Span(180, 260))        # the next window began at 180
        assert [g.expires_at for g in shorter] == [180, 500.0] and redates == (("period:tokens:100", 180.0),)
        assert windowed(shorter, "tokens", Span(180, 260)) == (shorter, ())
        assert balance(shorter, "tokens", 190.0) == 9

    def test_nothing_rolls_over_from_before_a_cancellation(self):
        """The subscription ended with its window's credits unspent (forfeited, or kept until they expire): a
        new subscription's windows start without a carry of them."""
        def span_at(t):
            start = int(t // 100) * 100
            return Span(start, start + 100)
        first = period_grants(50, 30, "tokens", span_at, 10.0, None)
        last = last_window(first, "tokens")
        assert [g.amount for g in period_grants(50, 30, "tokens", span_at, 510.0, last, since=40.0)] == [50]
        assert [g.amount for g in period_grants(50, 30, "tokens", span_at, 110.0, last, since=-5.0)] == [50, 30]

    def test_tier_grants_roll_over_up_to_the_cap_and_through_untouched_windows(self):
        def span_at(t):
            start = int(t // 100) * 100
            return Span(start, start + 100)
        first = period_grants(50, 30, "tokens", span_at, 10.0, None)
        assert [(g.source, g.amount, g.expires_at) for g in first] == [(GrantSource.PERIOD, 50, 100)]
        spent_some = [Grant(g.id, g.meter, g.amount, 20, g.priority, g.created, g.expires_at, g.source) for g in first]
        second = period_grants(50, 30, "tokens", span_at, 110.0, last_window(spent_some, "tokens"))
        assert [g.amount for g in second] == [50, 20]
        assert period_grants(50, 30, "tokens", span_at, 150.0, last_window(spent_some + list(second), "tokens")) == ()
        skipped = period_grants(50, 30, "tokens", span_at, 510.0, last_window(spent_some, "tokens"))
        assert [g.amount for g in skipped] == [50, 30]

    def test_a_checkout_of_packs_grants_per_unit_of_quantity_once_per_line(self, ai):
        session = {"object": "checkout.session", "id": "cs_1", "mode": "payment", "payment_status": "paid",
                   "line_items": {"data": [{"price": {"id": "price_tokens_1m"}, "quantity": 3},
                                           {"price": {"id": "price_unrelated"}, "quantity": 1}]}}
        (grant,) = ai.credits.purchased("checkout.session.completed", session, 1000.0)
        assert (grant.id, grant.amount, grant.expires_at, grant.priority) == ("cs_1:0", 3_000_000, 1000.0 + 365 * 86400, 10)
        assert ai.credits.purchased("checkout.session.completed", dict(session, payment_status="unpaid"), 1.0) == ()
        # A pack sold beside a subscription grants as well (the bug was that it granted nothing); setup pays nothing.
        assert [g.amount for g in ai.credits.purchased("checkout.session.completed",
                                                       dict(session, mode="subscription"), 1.0)] == [3_000_000]
        assert ai.credits.purchased("checkout.session.completed", dict(session, mode="setup"), 1.0) == ()
        assert ai.credits.needs_line_items("checkout.session.completed",
                                           {k: v for k, v in session.items() if k != "line_items"})

    def test_a_checkout_past_what_a_grant_holds_is_refused_whole(self, ai):
        """10^15 credits at most per grant (as a plan's pack and an admin's grant): two of 2^62 summed past what
        PostgreSQL's balance holds."""
        line = {"price": {"id": "price_tokens_1m"}, "quantity": 10**9}         # 10^6 credits a unit: 10^15
        session = {"object": "checkout.session", "id": "cs_2", "mode": "payment", "payment_status": "paid",
                   "line_items": {"data": [line]}}
        (grant,) = ai.credits.purchased("checkout.session.completed", session, 1000.0)
        assert grant.amount == 10**15
        with pytest.raises(AbsurdPurchase, match="more than a grant holds"):
            ai.credits.purchased("checkout.session.completed",
                                 dict(session, line_items={"data": [line, dict(line, quantity=10**9 + 1)]}), 1000.0)

    def test_the_usage_book_spends_and_counts_overage(self, ai):
        book = UsageBook(ai)
        state = fold(ai, subscribed(ai, "price_scale_yearly"))
        book.add_grants("ws", [Grant("g", "tokens", 10, 10, 5, NOW - 5, None, GrantSource.ADMIN)])
        limit = book.check(state, "tokens", 1, NOW).limit
        book.consume(state, "tokens", limit, NOW)
        d = book.consume(state, "tokens", 15, NOW)
        assert (d.credits_used, d.overage, book.balance(state, "tokens", NOW), book.overage[("ws", "tokens")]) == \
            (10, 5, 0, 5)


CAPPED = """
version: 1
meters: {tokens: {stripe_meter: tokens_over}}
statuses:
  free:
    initial: true
    quotas: {tokens: {limit: 50, per: day, per_unit: {trait: members}, overage: {up_to: 50}}}
  gone: {access: deny, terminal: true}
transitions: [{from: free, on: "admin:close", to: gone}]
"""


class TestOverageBilledAtMostTheCap:
    """A window bills at most its quota's `overage: {up_to}`, whatever the work: a consume that would bill past it
    is refused whole, work that already ran is counted and billed only up to it, and a limit that changed within
    the window (seats, traits) does not open the cap again."""

    @pytest.fixture
    def capped(self, write_plan):
        return write_plan(CAPPED)

    @staticmethod
    def members(table, n: int):
        return table.initial_state("s", NOW).with_(traits=(("members", n),))

    def test_billable_is_what_is_left_of_the_cap(self):
        assert (billable(30, 0, 50), billable(30, 40, 50), billable(5, 50, 50), billable(5, 70, 50)) == (30, 10, 0, 0)
        assert billable(7, 10**15, None) == 7

    def test_a_consume_straddling_the_cap_is_refused_whole(self, capped):
        book = UsageBook(capped)
        one = self.members(capped, 1)
        assert book.consume(one, "tokens", 95, NOW).overage == 45
        d = book.consume(one, "tokens", 10, NOW)
        assert (d.allowed, d.reason, d.overage, book.used(one, "tokens", NOW)) == (False, Reason.QUOTA_EXHAUSTED, 0, 95)
        assert book.consume(one, "tokens", 5, NOW).overage == 5
        assert book.overage[("s", "tokens")] == 50

    def test_a_limit_raised_within_the_window_does_not_bill_past_the_cap(self, capped):
        """50 a member: one member used 80 (30 billed); a second member raises the limit to 100. Taken from the
        usage alone, the window had billed nothing (80 is under 100): 20 more within the limit and 50 of overage
        went through, 80 billed in a window capped at 50."""
        book = UsageBook(capped)
        one, two = self.members(capped, 1), self.members(capped, 2)
        assert book.consume(one, "tokens", 80, NOW).overage == 30
        assert capped.can_process(two, "tokens", 70, 80, NOW).allowed          # the usage alone says yes
        d = book.consume(two, "tokens", 70, NOW)
        assert (d.allowed, d.reason) == (False, Reason.QUOTA_EXHAUSTED)
        assert not capped.can_process(two, "tokens", 70, 80, NOW, billed=30).allowed
        d = book.consume(two, "tokens", 40, NOW)
        assert (d.allowed, d.overage, d.used) == (True, 20, 120)
        assert book.overage[("s", "tokens")] == 50
        assert not book.check(two, "tokens", 1, NOW).allowed

    def test_a_limit_lowered_within_the_window_bills_only_what_the_cap_leaves(self, capped):
        book = UsageBook(capped)
        two, one = self.members(capped, 2), self.members(capped, 1)
        assert book.consume(two, "tokens", 90, NOW).overage == 0
        # 40 past the new limit, none of it billed: the window holds at most the limit and the cap (100)
        assert not book.consume(one, "tokens", 11, NOW).allowed
        assert book.consume(one, "tokens", 10, NOW).overage == 10
        assert book.record(one, "tokens", 100, NOW) == 200                      # ran: counted, billed to the cap
        assert book.overage[("s", "tokens")] == 50

    def test_work_that_ran_past_the_cap_is_counted_and_not_billed(self, capped):
        book = UsageBook(capped)
        one = self.members(capped, 1)
        assert book.record(one, "tokens", 90, NOW) == 90
        assert book.overage[("s", "tokens")] == 40
        assert book.record(one, "tokens", 30, NOW) == 120
        assert book.overage[("s", "tokens")] == 50
        assert not book.consume(one, "tokens", 1, NOW).allowed

    def test_work_that_ran_spends_credits_before_it_is_overage(self, ai):
        book = UsageBook(ai)
        state = fold(ai, subscribed(ai, "price_scale_yearly"))
        book.add_grants("ws", [Grant("g", "tokens", 10, 10, 5, NOW - 5, None, GrantSource.ADMIN)])
        limit = book.check(state, "tokens", 1, NOW).limit
        assert book.record(state, "tokens", limit + 25, NOW) == limit + 15      # credits are not counted
        assert (book.balance(state, "tokens", NOW), book.overage[("ws", "tokens")]) == (0, 15)


class TestStateCarriesEntitlements:
    def test_with_covers_every_field(self):
        state = SubjectState("s", "free")
        changed = state.with_(quantity=3, addons=(("a", 1),), traits=(("members", 2),))
        assert (changed.quantity, changed.addons, changed.traits) == (3, (("a", 1),), (("members", 2),))

    def test_a_status_entered_keeps_quantity_addons_and_traits(self, saas):
        state = fold(saas, subscribed(saas, "price_team_seat_monthly", 4, [("price_audit_log_monthly", 1)]))
        state = state.with_(traits=(("x", 1),))
        moved = saas.apply(state, StripeEvent("invoice.payment_failed", {"object": "invoice", "customer": "cus_1",
                                                                        "subscription": "sub_1"}, "e", NOW), NOW)
        assert moved.moved and (moved.state.quantity, moved.state.addons, moved.state.traits) == \
            (4, (("audit_log_addon", 1),), (("x", 1),))


DAY = 86400


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """The ai-api example with credits of Scale's too."""
    text = (REPO / "examples" / "ai-api" / "plans.yaml").read_text(encoding="utf-8")
    scale = "      requests: {limit: 600, per: minute}\n"
    assert text.count(scale) == 1
    path = tmp_path_factory.mktemp("tiers") / "plans.yaml"
    path.write_text(text.replace(scale, scale + "    credits:\n      tokens: "
                                 "{amount: 1000000, per: billing_period, rollover: 500000}\n"), encoding="utf-8")
    return compile_file(path)


class TestTierCreditsAcrossTierChanges:
    """A tier's credits carry over only from windows of that tier: not from the window of the tier the subject
    left (upgrade or downgrade, at a renewal or mid-period), nor from its own windows before it left and came
    back. Starter grants 200000 a billing period (up to 100000 carried over); Scale, here, 1000000 (500000)."""

    T0 = 1_800_000_000

    @staticmethod
    def sub(price: str, start: float, end: float) -> dict:
        return {"object": "subscription", "id": "sub_1", "customer": "cus_1", "status": "active",
                "items": {"data": [{"price": {"id": price}, "quantity": 1, "current_period_start": int(start),
                                    "current_period_end": int(end)}]}}

    def event(self, table, state, kind: str, price: str, start: float, end: float, at: float):
        return table.apply(state, StripeEvent(kind, self.sub(price, start, end), f"evt_{at}", at), at).state

    def started(self, table, book: UsageBook, price: str = "price_starter_monthly"):
        """Subscribed at T0 for 30 days, the period's grant made (unspent)."""
        state = self.event(table, table.initial_state("ws", self.T0 - 60), "customer.subscription.created", price,
                           self.T0, self.T0 + 30 * DAY, self.T0 + 1)
        book.balance(state, "tokens", self.T0 + 60)
        return state

    def test_an_upgrade_at_renewal_carries_nothing_of_the_old_tier_and_its_own_window_carries_on(self, two):
        book = UsageBook(two)
        state = self.started(two, book)
        assert state.tier_since == self.T0
        renewal = self.T0 + 30 * DAY
        state = self.event(two, state, "customer.subscription.updated", "price_scale_yearly", renewal,
                           renewal + 365 * DAY, renewal + 2)     # its event a moment after the period began
        assert (state.tier, state.tier_since) == ("scale", renewal)
        assert book.balance(state, "tokens", renewal + 60) == 1_000_000        # no 200000 of Starter's carried
        # Scale's own windows carry on (its first window began when it was entered)
        state = self.event(two, state, "customer.subscription.updated", "price_scale_yearly", renewal + 365 * DAY,
                           renewal + 730 * DAY, renewal + 365 * DAY + 2)
        assert state.tier_since == renewal
        assert book.balance(state, "tokens", renewal + 365 * DAY + 60) == 1_500_000

    def test_a_downgrade_mid_period_keeps_the_windows_grant_and_carries_nothing_into_the_next(self, two):
        book = UsageBook(two)
        state = self.started(two, book, "price_scale_yearly")
        middle = self.T0 + 10 * DAY
        state = self.event(two, state, "customer.subscription.updated", "price_starter_monthly", self.T0,
                           self.T0 + 30 * DAY, middle)      # the same period: the grant of its window stands
        assert (state.tier, state.tier_since) == ("starter", middle)
        assert book.balance(state, "tokens", middle + 60) == 1_000_000
        renewal = self.T0 + 30 * DAY
        state = self.event(two, state, "customer.subscription.updated", "price_starter_monthly", renewal,
                           renewal + 30 * DAY, renewal + 2)
        assert state.tier_since == middle                  # a renewal is no change of tier
        assert book.balance(state, "tokens", renewal + 60) == 200_000         # none of Scale's 1000000 carried
        # the window after carries Starter's own
        assert book.balance(state, "tokens", renewal + 30 * DAY + 60) == 300_000

    def test_leaving_a_tier_and_coming_back_starts_fresh(self, two):
        book = UsageBook(two)
        state = self.started(two, book)
        state = self.event(two, state, "customer.subscription.updated", "price_scale_yearly", self.T0,
                           self.T0 + 30 * DAY, self.T0 + 5 * DAY)
        back = self.T0 + 6 * DAY
        state = self.event(two, state, "customer.subscription.updated", "price_starter_monthly", self.T0,
                           self.T0 + 30 * DAY, back)
        assert (state.tier, state.tier_since) == ("starter", back)
        assert book.balance(state, "tokens", self.T0 + 31 * DAY) == 200_000     # Starter's window before: left

    def test_a_change_mid_period_before_the_meter_was_used_carries_the_new_tiers_own_grant(self, two):
        """No token used until after an upgrade mid-period: the window's grant is Scale's, and Scale carries it
        into its next window (it used to be lost: the window began before Scale was entered)."""
        book = UsageBook(two)
        state = self.event(two, two.initial_state("ws", self.T0 - 60), "customer.subscription.created",
                           "price_starter_monthly", self.T0, self.T0 + 30 * DAY, self.T0 + 1)
        middle = self.T0 + 10 * DAY
        state = self.event(two, state, "customer.subscription.updated", "price_scale_yearly", self.T0,
                           self.T0 + 30 * DAY, middle)
        assert (state.tier, state.tier_since) == ("scale", middle)
        assert book.balance(state, "tokens", middle + 60) == 1_000_000            # the window's grant, Scale's
        assert {g.tier_since for g in book.grants["ws"]} == {middle}
        renewal = self.T0 + 30 * DAY
        state = self.event(two, state, "customer.subscription.updated", "price_scale_yearly", renewal,
                           renewal + 30 * DAY, renewal + 2)
        assert book.balance(state, "tokens", renewal + 60) == 1_500_000           # 500000 of it carried

    def test_the_carry_stops_at_the_window_that_began_before_the_tier_was_entered(self):
        def span_at(t):
            start = int(t // 100) * 100
            return Span(start, start + 100)
        last = last_window(period_grants(50, 30, "tokens", span_at, 10.0, None), "tokens")
        assert [g.amount for g in period_grants(50, 30, "tokens", span_at, 110.0, last, tier_since=40.0)] == [50]
        assert [g.amount for g in period_grants(50, 30, "tokens", span_at, 110.0, last, tier_since=0.0)] == [50, 30]
        assert [g.amount for g in period_grants(50, 30, "tokens", span_at, 110.0, last)] == [50, 30]   # unknown
        # the window the tier was entered in, its grant made in this stay in the tier (after the change): carried
        mine = last_window(period_grants(50, 30, "tokens", span_at, 60.0, None, tier_since=40.0), "tokens")
        assert [g.amount for g in period_grants(50, 30, "tokens", span_at, 110.0, mine, tier_since=40.0)] == [50, 30]
        # made in an earlier stay (the subject left and came back at 45): not carried
        assert [g.amount for g in period_grants(50, 30, "tokens", span_at, 110.0, mine, tier_since=45.0)] == [50]
