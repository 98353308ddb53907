"""Transitions: what a Stripe event, a timer or an admin causes, and why nothing moved when nothing did."""
from __future__ import annotations

import pytest

from plangate.engine import AdminAction, StripeEvent, TimerFired, UnknownStatus

from .helpers import at

NOW = at("2026-01-05 09:00")
DAY = 86400

CONDITIONS_PLAN = """\
version: 1
meters:
  requests: {}
statuses:
  free:
    initial: true
    quotas: {requests: {limit: 10, per: day}}
  trial:
    expires_after: 2d
    quotas: {requests: {limit: 10, per: day}}
  paid:
    quotas: {requests: unlimited}
  closed:
    access: deny
    terminal: true
transitions:
  - from: free
    on: stripe:customer.subscription.updated
    when: {status: active, metadata.plan: gold, livemode: true}
    to: paid
  - from: free
    on: admin:try
    to: trial
  - from: trial
    on: timer
    to: free
  - from: [paid, trial]
    on: stripe:invoice.paid
    to: paid
  - from: paid
    on: admin:downgrade
    to: free
  - from: any
    on: admin:close
    to: closed
"""

GOLD = {"object": "subscription", "status": "active", "metadata": {"plan": "gold"}, "livemode": True}


@pytest.fixture
def table(write_plan):
    return write_plan(CONDITIONS_PLAN)


@pytest.fixture
def free(table):
    return table.initial_state("s", NOW)


def updated(**fields) -> StripeEvent:
    return StripeEvent("customer.subscription.updated", {**GOLD, **fields})


class TestConditions:
    def test_every_condition_holds(self, table, free):
        out = table.apply(free, updated(), NOW)
        assert out.moved and out.state.status == "paid"
        assert out.rule == f"{table.plan.file}:17 transitions[0]"
        assert out.reason.startswith("free -> paid: on stripe:customer.subscription.updated when status=active")

    @pytest.mark.parametrize("fields", [
        {"status": "past_due"}, {"metadata": {"plan": "silver"}}, {"metadata": {}}, {"metadata": "gold"},
        {"livemode": 1}, {"livemode": "true"},
    ])
    def test_one_failing_condition_is_a_no_op_that_says_which_transition_it_missed(self, table, free, fields):
        out = table.apply(free, updated(**fields), NOW)
        assert not out.moved and out.state.status == "free"
        assert "no transition from 'free' on stripe:customer.subscription.updated matches the event" in out.reason
        assert "metadata.plan=gold" in out.reason

    def test_a_list_of_values_matches_any_of_them(self, shipped):
        trial = shipped.initial_state("s", NOW).with_(status="paid_trial")
        for status in ("past_due", "unpaid"):
            event = StripeEvent("customer.subscription.updated", {"object": "subscription", "status": status})
            assert shipped.apply(trial, event, NOW).state.status == "billing_problem"

    def test_an_object_that_is_not_a_mapping_matches_no_condition(self, table, free):
        out = table.apply(free, StripeEvent("customer.subscription.updated", None), NOW)
        assert not out.moved


class TestNoOps:
    def test_an_event_no_transition_mentions(self, table, free):
        out = table.apply(free, StripeEvent("charge.refunded", {"object": "charge"}), NOW)
        assert (out.moved, out.state, out.rule) == (False, free, None)
        assert out.reason == "no transition from 'free' on stripe:charge.refunded"

    def test_a_due_timer_whose_transition_stays_put_stops(self, write_plan):
        table = write_plan(CONDITIONS_PLAN.replace("  - from: trial\n    on: timer\n    to: free\n",
                                                   "  - from: trial\n    on: timer\n    to: trial\n"
                                                   "  - from: trial\n    on: admin:end\n    to: free\n"))
        trial = table.apply(table.initial_state("s", NOW), AdminAction("try"), NOW).state
        out = table.apply(trial, TimerFired(), NOW + 2 * DAY)
        assert not out.moved and out.state.status == "trial" and out.state.timer_due is None
        assert out.reason.startswith("already in 'trial'")

    def test_a_self_transition_does_not_move_or_restart_anything(self, table, free):
        paid = table.apply(free, updated(), NOW).state
        out = table.apply(paid, StripeEvent("invoice.paid", {"object": "invoice"}), NOW + DAY)
        assert not out.moved and out.state == paid
        assert out.reason.startswith("already in 'paid'")

    def test_nothing_leaves_a_terminal_status(self, table, free):
        closed = table.apply(free, AdminAction("close"), NOW).state
        for trigger in (AdminAction("close"), AdminAction("try"), updated(), TimerFired()):
            out = table.apply(closed, trigger, NOW + DAY)
            assert not out.moved and out.state.status == "closed"

    def test_an_admin_action_from_the_wrong_status(self, table, free):
        out = table.apply(free, AdminAction("downgrade"), NOW)
        assert not out.moved and "admin:downgrade" in out.reason


class TestTimers:
    def test_entering_a_status_with_expires_after_sets_its_timer(self, table, free):
        out = table.apply(free, AdminAction("try", actor="support"), NOW)
        assert out.moved and out.state.status == "trial"
        assert out.state.timer_due == NOW + 2 * DAY == out.timer_set
        assert out.state.since == NOW

    def test_a_timer_not_yet_due_does_nothing(self, table, free):
        trial = table.apply(free, AdminAction("try"), NOW).state
        out = table.apply(trial, TimerFired(), NOW + DAY)
        assert not out.moved and out.state == trial
        assert "not yet" in out.reason
        assert not table.timer_due(trial, NOW + DAY)

    def test_a_due_timer_moves_at_its_deadline(self, table, free):
        trial = table.apply(free, AdminAction("try"), NOW).state
        assert table.timer_due(trial, NOW + 2 * DAY)
        out = table.apply(trial, TimerFired(), NOW + 2 * DAY)
        assert out.moved and out.state.status == "free"
        assert out.timer_cleared and out.timer_set is None and out.state.timer_due is None

    def test_no_timer_runs(self, table, free):
        out = table.apply(free, TimerFired(), NOW)
        assert not out.moved and out.reason == "no timer runs in 'free'"
        assert not table.timer_due(free, NOW + 365 * DAY)

    def test_leaving_a_status_early_clears_its_timer(self, table, free):
        trial = table.apply(free, AdminAction("try"), NOW).state
        out = table.apply(trial, StripeEvent("invoice.paid", {"object": "invoice"}), NOW + DAY)
        assert out.moved and out.state.timer_due is None and out.timer_cleared


class TestOverride:
    def test_moves_directly_and_starts_the_new_status_timer(self, table, free):
        out = table.override(free, "trial", NOW, why="goodwill")
        assert out.moved and out.state.status == "trial" and out.state.timer_due == NOW + 2 * DAY
        assert out.trigger == "admin:override" and out.rule is None
        assert out.reason == "free -> trial: admin override (goodwill)"

    def test_to_the_same_status_is_a_no_op(self, table, free):
        out = table.override(free, "free", NOW)
        assert not out.moved and out.state == free

    def test_to_an_unknown_status(self, table, free):
        with pytest.raises(UnknownStatus, match="vip"):
            table.override(free, "vip", NOW)


class TestStateAndFacts:
    def test_a_new_subject_starts_in_the_initial_status(self, shipped):
        state = shipped.initial_state("alice", NOW)
        assert (state.subject, state.status, state.since, state.timer_due) == ("alice", "limited_free_trial", NOW, None)
        assert state.plan_version == shipped.version

    def test_a_move_records_the_plan_version(self, table, free):
        old = free.with_(plan_version="older")
        assert table.apply(old, AdminAction("try"), NOW).state.plan_version == table.version

    def test_a_no_op_may_still_update_the_subscription_facts(self, shipped):
        paid = shipped.initial_state("s", NOW).with_(status="paid", tier="pro", period_start=NOW,
                                                      period_end=NOW + 30 * DAY)
        sub = {"object": "subscription", "status": "active", "current_period_start": int(NOW + 30 * DAY),
               "current_period_end": int(NOW + 60 * DAY)}
        out = shipped.apply(paid, StripeEvent("customer.subscription.updated", sub), NOW + 30 * DAY)
        assert not out.moved and out.changed
        assert (out.state.status, out.state.period_end) == ("paid", NOW + 60 * DAY)

    def test_an_unknown_status_is_an_error_not_a_no_op(self, table, free):
        with pytest.raises(UnknownStatus):
            table.apply(free.with_(status="vip"), AdminAction("close"), NOW)

    def test_the_same_trigger_gives_the_same_outcome(self, table, free):
        assert table.apply(free, updated(), NOW) == table.apply(free, updated(), NOW)


class TestInvoiceFacts:
    """A paid invoice's lines tell what is paid for; they give a period to a subject that has none yet."""

    def test_paid_invoice_sets_paid_through_and_a_missing_period(self, table):
        state = table.initial_state("u", 1_000.0)
        invoice = {"object": "invoice", "status": "paid",
                   "lines": {"data": [{"period": {"start": 2_000, "end": 2_000 + 30 * 86400}}]}}
        after = table.invoice_facts(state, invoice)
        assert (after.paid_through, after.period_start, after.period_end) == (2_000 + 30 * 86400, 2_000.0,
                                                                              2_000 + 30 * 86400)

    def test_known_period_is_kept_and_paid_through_only_grows(self, table):
        state = table.initial_state("u", 1_000.0).with_(period_start=10.0, period_end=20.0, paid_through=500.0)
        older = {"object": "invoice", "status": "paid", "lines": {"data": [{"period": {"start": 1, "end": 400}}]}}
        assert table.invoice_facts(state, older) == state
        unpaid = {"object": "invoice", "status": "open", "lines": {"data": [{"period": {"start": 1, "end": 900}}]}}
        assert table.invoice_facts(state, unpaid) == state
