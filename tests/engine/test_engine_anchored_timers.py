"""Timers on Stripe's dates (`expires_at: trial_end + 2h`): set from the subscription's date, moved when Stripe
moves it, falling back to expires_after; and `event:` steps of a story, which replay whole Stripe events from
files and fail where the gate could not link them."""
from __future__ import annotations

import json

import pytest

from plangate.engine import StripeEvent, advance
from plangate.engine._playback import play
from plangate.engine._scenario import ScenarioError, parse_scenario

NOW = 1_800_000_000.0
H, D = 3600, 86400

PLAN = """\
version: 1
meters:
  requests: {}
statuses:
  free:
    initial: true
    quotas:
      requests: {limit: 1, per: day}
  trial:
    expires_at: trial_end + 2h
    expires_after: 7d
    quotas:
      requests: {limit: 9, per: day}
  leaving:
    expires_at: cancel_at - 1h
    quotas:
      requests: {limit: 9, per: day}
  lapsed:
    access: deny
transitions:
  - from: free
    on: stripe:customer.subscription.created
    when: {status: trialing}
    to: trial
  - from: free
    on: stripe:checkout.session.completed
    to: trial
  - from: [trial, leaving]
    on: timer
    to: lapsed
  - from: trial
    on: stripe:customer.subscription.updated
    when: {cancel_at: {exists: true}}
    to: leaving
  - from: leaving
    on: stripe:customer.subscription.updated
    when: {cancel_at: {exists: false}}
    to: trial
  - from: lapsed
    on: admin:restart
    to: free
"""


@pytest.fixture
def table(write_plan):
    return write_plan(PLAN)


def sub(type_: str, at: float, **fields) -> StripeEvent:
    return StripeEvent(type_, {"object": "subscription", "id": "sub_1", "status": "trialing", **fields}, "", at)


class TestAnchoredTimers:
    def test_entering_sets_the_timer_at_the_date_plus_slack(self, table):
        state = table.initial_state("s", NOW)
        out = table.apply(state, sub("customer.subscription.created", NOW, trial_end=NOW + 7 * D), NOW)
        assert out.moved and out.state.timer_due == NOW + 7 * D + 2 * H and out.state.trial_end == NOW + 7 * D

    def test_without_the_date_expires_after_runs_until_stripe_tells_it(self, table):
        state = table.initial_state("s", NOW)
        state = table.apply(state, StripeEvent("checkout.session.completed", {"object": "checkout.session"}),
                            NOW).state
        assert state.timer_due == NOW + 7 * D
        later = table.apply(state, sub("customer.subscription.created", NOW + 5, trial_end=NOW + 14 * D), NOW + 5)
        assert not later.moved and later.state.timer_due == NOW + 14 * D + 2 * H

    def test_a_trial_stripe_extends_moves_the_timer(self, table):
        state = table.apply(table.initial_state("s", NOW),
                            sub("customer.subscription.created", NOW, trial_end=NOW + 7 * D), NOW).state
        moved = table.apply(state, sub("customer.subscription.updated", NOW + D, trial_end=NOW + 10 * D), NOW + D)
        assert not moved.moved and moved.state.timer_due == NOW + 10 * D + 2 * H
        same = table.apply(moved.state, sub("customer.subscription.updated", NOW + 2 * D, trial_end=NOW + 10 * D,
                                            status="trialing"), NOW + 2 * D)
        assert same.state == moved.state

    def test_an_event_without_the_field_leaves_the_date_as_it_was(self, table):
        state = table.apply(table.initial_state("s", NOW),
                            sub("customer.subscription.created", NOW, trial_end=NOW + 7 * D), NOW).state
        other = table.apply(state, StripeEvent("customer.subscription.updated",
                                               {"object": "subscription", "status": "trialing"}), NOW + 1)
        assert other.state.timer_due == NOW + 7 * D + 2 * H

    def test_a_negative_slack_and_a_date_that_is_dropped(self, table):
        state = table.apply(table.initial_state("s", NOW),
                            sub("customer.subscription.created", NOW, trial_end=NOW + 7 * D), NOW).state
        leaving = table.apply(state, sub("customer.subscription.updated", NOW + D, cancel_at=NOW + 5 * D), NOW + D)
        assert leaving.moved and leaving.state.timer_due == NOW + 5 * D - H
        later = table.apply(leaving.state, sub("customer.subscription.updated", NOW + 2 * D, cancel_at=NOW + 6 * D),
                            NOW + 2 * D)
        assert later.state.timer_due == NOW + 6 * D - H
        back = table.apply(later.state, sub("customer.subscription.updated", NOW + 3 * D, cancel_at=None), NOW + 3 * D)
        assert back.moved and back.state.status == "trial" and back.state.cancel_at is None
        assert back.state.timer_due == NOW + 7 * D + 2 * H

    def test_the_timer_fires_at_its_moment_and_never_before_entry(self, table):
        state = table.apply(table.initial_state("s", NOW),
                            sub("customer.subscription.created", NOW, trial_end=NOW - D), NOW).state
        assert state.timer_due == NOW - D + 2 * H          # the date was already past when the trial began
        after, fired = advance(table, state, NOW + 10)
        assert [o.moved for o in fired] == [True] and after.status == "lapsed" and after.since == NOW


class TestEventSteps:
    def story(self, tmp_path, steps: str, events: dict[str, dict]) -> str:
        for name, event in events.items():
            (tmp_path / name).write_text(json.dumps(event), encoding="utf-8")
        text = f'name: s\nstart: "2027-01-01T00:00:00Z"\nsubject: ann\nsteps:\n{steps}'
        (tmp_path / "story.yaml").write_text(text, encoding="utf-8")
        return text

    @staticmethod
    def event(type_: str, obj: dict, created: int = 1_798_761_700) -> dict:
        return {"id": f"evt_{type_}", "object": "event", "type": type_, "created": created, "data": {"object": obj}}

    def test_an_event_happens_at_its_created_and_applies_whole(self, tmp_path, table):
        created = self.event("customer.subscription.created", {
            "object": "subscription", "id": "sub_1", "customer": "cus_1", "status": "trialing",
            "trial_end": 1_798_761_700 + 7 * D, "metadata": {}}, 1_798_761_700)
        checkout = self.event("checkout.session.completed", {
            "object": "checkout.session", "client_reference_id": "ann", "customer": "cus_1", "subscription": "sub_1"},
            1_798_761_600)
        text = self.story(tmp_path, "  - event: a.json\n    expect: {status: trial, timer: 7d}\n"
                                    "  - event: b.json\n    expect: {status: trial, timer: 170h}\n",
                          {"a.json": checkout, "b.json": created})
        scenario = parse_scenario(text, str(tmp_path / "story.yaml"), table)
        assert scenario.steps[1].at == 1_798_761_700
        result = play(table, scenario)
        assert result.passed, result.failure and result.failure.describe("story.yaml")

    def test_an_event_the_gate_could_not_link_fails_the_story(self, tmp_path, table):
        orphan = self.event("customer.subscription.created", {
            "object": "subscription", "id": "sub_9", "customer": "cus_9", "status": "trialing", "metadata": {}})
        text = self.story(tmp_path, "  - event: a.json\n", {"a.json": orphan})
        result = play(table, parse_scenario(text, str(tmp_path / "story.yaml"), table))
        assert not result.passed
        said = result.failure.describe("story.yaml")
        assert "step 1 (event) at story.yaml:5:" in said
        assert "cannot be linked to 'ann'" in said and "cus_9 or sub_9" in said and "pending" in said

    @pytest.mark.parametrize("content, says", [
        (None, "cannot read"),
        ("{", "is not JSON"),
        ('{"type": "invoice.paid", "created": 1}', "needs data.object"),
        ('{"type": "invoice.payed", "created": 1, "data": {"object": {}}}', "not a Stripe event type"),
        ('{"type": "invoice.paid", "created": "now", "data": {"object": {}}}', "created must be Unix seconds"),
    ])
    def test_a_broken_event_file_is_located(self, tmp_path, table, content, says):
        if content is not None:
            (tmp_path / "a.json").write_text(content, encoding="utf-8")
        text = 'name: s\nstart: "2027-01-01T00:00:00Z"\nsteps:\n  - event: a.json\n'
        with pytest.raises(ScenarioError) as err:
            parse_scenario(text, str(tmp_path / "story.yaml"), table)
        ((where, message),) = err.value.problems
        assert where.line == 4 and says in message

    def test_times_in_a_written_object_become_unix_seconds(self, tmp_path, table):
        text = ('name: s\nstart: "2027-01-01T00:00:00Z"\nsubject: ann\nsteps:\n'
                '  - stripe: customer.subscription.created\n'
                '    object: {status: trialing, trial_end: "2027-01-08T00:00:00Z"}\n'
                '    expect: {status: trial, timer: 170h}\n')
        scenario = parse_scenario(text, str(tmp_path / "story.yaml"), table)
        assert scenario.steps[0].object["trial_end"] == 1_798_761_600 + 7 * D
        assert play(table, scenario).passed


def _sub(sub_id: str, status: str, trial_end: float | None, start: float, **extra) -> dict:
    return {"id": sub_id, "object": "subscription", "customer": "cus_back", "status": status,
            "trial_end": None if trial_end is None else int(trial_end), "metadata": {"plangate_subject": "back"},
            "items": {"data": [{"price": {"id": "price_pro_monthly"}, "quantity": 1,
                                "current_period_start": int(start), "current_period_end": int(start + 30 * D)}]},
            **extra}


def test_a_returning_customers_new_trial_is_not_timed_by_the_old_subscriptions_trial_end(shipped):
    """sub_1's trial ended months ago and sub_1 was canceled. The customer comes back through Checkout, whose
    event Stripe delivers before sub_2's created: the new trial's timer runs from entry (expires_after), not from
    sub_1's trial_end long past (it fired at the next sweep: billing_problem). sub_2's created then sets it."""
    t0 = NOW - 200 * D
    state = shipped.initial_state("back", t0 - H)
    for kind, obj, at_ in (("customer.subscription.created", _sub("sub_1", "trialing", t0 + 7 * D, t0), t0),
                           ("customer.subscription.deleted",
                            _sub("sub_1", "canceled", t0 + 7 * D, t0, ended_at=int(t0 + 20 * D)), t0 + 20 * D)):
        state = shipped.apply(state, StripeEvent(kind, obj, f"evt_{at_}", at_), at_).state
    assert state.status == "canceled"
    checkout = {"id": "cs_back", "object": "checkout.session", "mode": "subscription", "status": "complete",
                "payment_status": "paid", "client_reference_id": "back", "customer": "cus_back",
                "subscription": "sub_2", "metadata": {}}
    state = shipped.apply(state, StripeEvent("checkout.session.completed", checkout, "evt_cs", NOW), NOW).state
    assert state.status == "paid_trial" and state.timer_due == NOW + 7 * D, (state.timer_due - NOW) / H
    assert advance(shipped, state, NOW + 60)[0].status == "paid_trial"
    created = _sub("sub_2", "trialing", NOW + 7 * D, NOW)
    state = shipped.apply(state, StripeEvent("customer.subscription.created", created, "evt_2", NOW + 5), NOW + 5).state
    assert (state.status, state.timer_due) == ("paid_trial", NOW + 7 * D + 2 * H)


ADDON_PLAN = """\
version: 1
meters:
  requests: {}
tiers:
  pro:
    prices: [price_pro]
    quotas:
      requests: {limit: 100, per: day}
addons:
  extra:
    prices: [price_extra]
    quotas:
      requests: 50
statuses:
  free:
    initial: true
    quotas:
      requests: {limit: 1, per: day}
  trial:
    expires_at: trial_end + 2h
    expires_after: 7d
    quotas:
      requests: tier
  lapsed:
    access: deny
    terminal: true
transitions:
  - from: free
    on: stripe:customer.subscription.created
    when: {status: trialing}
    to: trial
  - from: trial
    on: timer
    to: lapsed
"""


def test_an_add_ons_checkout_before_its_created_leaves_the_live_trial_timed_by_its_own_end(write_plan):
    """A trialing subscription lives on when the customer buys an add-on through Checkout, whose event comes
    before the add-on's created: the live trial keeps its trial_end (it took the add-on's unknown dates, its timer
    fell back to expires_after from entry, long past, and the next sweep lapsed the subject)."""
    table = write_plan(ADDON_PLAN)
    t0 = NOW - 10 * D
    trialing = {"id": "sub_A", "object": "subscription", "customer": "cus_1", "status": "trialing",
                "created": int(t0), "trial_end": int(t0 + 30 * D),
                "items": {"data": [{"price": {"id": "price_pro"}, "quantity": 1,
                                    "current_period_start": int(t0), "current_period_end": int(t0 + 30 * D)}]}}
    state = table.apply(table.initial_state("s", t0), StripeEvent("customer.subscription.created", trialing,
                                                                  "evt_a", t0), t0).state
    checkout = {"id": "cs_1", "object": "checkout.session", "mode": "subscription", "status": "complete",
                "customer": "cus_1", "subscription": "sub_B", "metadata": {}}
    after = table.apply(state, StripeEvent("checkout.session.completed", checkout, "evt_cs", NOW), NOW).state
    assert (after.trial_end, after.timer_due) == (t0 + 30 * D, t0 + 30 * D + 2 * H)
    assert advance(table, after, NOW + 60)[0].status == "trial"
