"""An invoice of a subscription that had ended (the customer pays its last open invoice after the cancellation):
recorded as an ended subscription's, it moves the subject only where a transition says `subscription: ended`.

The plan is tests/plans/ended-subscription.yaml (as examples/b2b: `suspended` is entered by grace running out and by
the subscription's end, and left by a payment); its SETTLED transition is kept or dropped per test.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from plangate.engine import replay

from .test_engine_subscriptions import DAY, T0, ev, invoice, sub

PLAN = Path(__file__).resolve().parents[1] / "plans" / "ended-subscription.yaml"
RENEWAL = T0 + 30 * DAY
ENDED = RENEWAL + 2 * DAY


def plan_text(settled: bool) -> str:
    text = PLAN.read_text(encoding="utf-8")
    if not settled:
        start = text.index("  # SETTLED")
        text = text[:start] + text[text.index("  - from", text.index("to: settled", start)):]
    return text


@pytest.fixture
def table(write_plan):
    return write_plan(plan_text(False))


def paid_late(invoice_at: float = ENDED + 5 * DAY, deleted_at: float = ENDED) -> list:
    """A's renewal fails (overdue); Stripe cancels A two days later (suspended); the customer pays the open renewal
    invoice on its hosted page afterwards: Stripe sends invoice.paid and invoice.payment_succeeded."""
    late = dict(invoice("in_A2", "sub_A", "paid"), amount_paid=2000, billing_reason="subscription_cycle",
                lines={"object": "list", "data": [{"period": {"start": int(RENEWAL), "end": int(RENEWAL + 30 * DAY)}}]})
    return [
        ev("customer.subscription.created", sub("sub_A", "active", T0), T0),
        ev("invoice.paid", invoice("in_A1", "sub_A", "paid"), T0),
        ev("invoice.payment_failed", invoice("in_A2", "sub_A", "open"), RENEWAL),
        ev("customer.subscription.updated", sub("sub_A", "past_due", T0), RENEWAL),
        ev("customer.subscription.deleted", sub("sub_A", "canceled", T0, ended_at=int(deleted_at)), deleted_at),
        ev("invoice.paid", late, invoice_at),
        ev("invoice.payment_succeeded", late, invoice_at),
    ]


def start(table):
    return table.initial_state("u", T0 - 10)


class TestPaidAfterTheEnd:
    def test_it_is_recorded_and_moves_nothing(self, table):
        final, steps = replay(table, start(table), paid_late())
        assert [s.outcome.state.status for s in steps] == \
            ["paid", "paid", "overdue", "overdue", "suspended", "suspended", "suspended"]
        late = [s.outcome for s in steps[-2:]]
        assert all(o.ended_subscription and not o.other_subscription and not o.moved for o in late)
        assert late[0].reason.startswith("about subscription sub_A, which ended on 2027-02-")
        assert "`subscription: ended` or `any`" in late[0].reason
        assert final.follows.id == "sub_A" and final.status == "suspended"

    def test_it_pays_through_nothing(self, table):
        before, _ = replay(table, start(table), paid_late()[:-2])
        final, _ = replay(table, start(table), paid_late())
        assert final.paid_through == before.paid_through == T0 + 30 * DAY

    def test_the_end_itself_is_the_followed_subscriptions_and_moves_the_subject(self, table):
        _, steps = replay(table, start(table), paid_late()[:5])
        assert steps[-1].outcome.moved and not steps[-1].outcome.ended_subscription

    def test_paid_before_the_end_it_moves_the_subject_as_ever(self, table):
        """Paid a day before Stripe cancels: the payment is a live subscription's; the end then suspends."""
        final, steps = replay(table, start(table), paid_late(invoice_at=ENDED - DAY))
        assert [s.outcome.state.status for s in steps[4:]] == ["paid", "paid", "suspended"]
        assert not any(s.outcome.ended_subscription for s in steps) and final.status == "suspended"

    def test_out_of_a_grace_that_ran_out_a_live_subscriptions_payment_still_leads(self, table):
        """suspended by the timer while the subscription lives on (past_due): its payment is no ended one's."""
        events = paid_late()[:4] + paid_late()[5:]
        final, steps = replay(table, start(table), events)
        assert steps[-2].timers and steps[-2].outcome.moved and final.status == "paid"


class TestAnyOrder:
    def test_every_order_of_delivery_folds_to_the_same_state_and_outcomes(self, table):
        events = paid_late()
        expected, steps = replay(table, start(table), events)
        outcomes = [(s.event.id, s.outcome.ended_subscription) for s in steps]
        for order in itertools.islice(itertools.permutations(events), 0, None, 37):
            final, again = replay(table, start(table), list(order))
            assert final == expected
            assert [(s.event.id, s.outcome.ended_subscription) for s in again] == outcomes

    def test_the_end_delivered_after_the_payment_makes_the_refold_record_it_so(self, table):
        """The gate folds what it has: without the end, the payment leads out of suspended (the timer's); once the
        end arrives, the fold from before it takes the payment for an ended subscription's."""
        events = paid_late()
        early, steps = replay(table, start(table), events[:4] + events[5:])
        assert early.status == "paid" and not steps[-2].outcome.ended_subscription
        final, steps = replay(table, start(table), events[:4] + events[5:] + events[4:5])
        assert final.status == "suspended" and steps[-2].outcome.ended_subscription

    @pytest.mark.parametrize("reverse", [False, True])
    def test_paid_in_the_second_it_ends_the_payment_goes_first_and_the_end_suspends(self, table, reverse):
        """Ties in `created` fold in the order a subscription's life makes events (invoice.paid before deleted),
        whatever order they come in: the payment is a live subscription's, and the end follows it."""
        events = paid_late(invoice_at=ENDED)
        tied = events[4:]
        final, steps = replay(table, start(table), events[:4] + (tied[::-1] if reverse else tied))
        assert [s.event.type for s in steps[4:]] == \
            ["invoice.paid", "invoice.payment_succeeded", "customer.subscription.deleted"]
        assert final.status == "suspended" and not any(s.outcome.ended_subscription for s in steps)


class TestSubscriptionEnded:
    def test_a_transition_for_ended_subscriptions_hears_the_payment(self, write_plan):
        table = write_plan(plan_text(True))
        final, steps = replay(table, start(table), paid_late())
        assert final.status == "settled" and steps[-2].outcome.moved
        assert "(subscription: ended) (about sub_A, which ended on 2027-02-" in steps[-2].outcome.reason
        assert steps[-1].outcome.ended_subscription      # invoice.payment_succeeded: no transition hears it

    def test_it_does_not_hear_a_live_subscriptions_payment(self, write_plan):
        table = write_plan(plan_text(True))
        events = paid_late()[:4] + paid_late()[5:]
        final, _ = replay(table, start(table), events)
        assert final.status == "paid"


class TestAnotherSubscriptionThatEnded:
    """A is canceled by dunning while B, bought a day after it, is followed: A's late invoice is an ended
    subscription's, not merely another's (a `subscription: other` transition does not hear it)."""

    def events(self) -> list:
        return [
            ev("customer.subscription.created", sub("sub_A", "active", T0), T0),
            ev("customer.subscription.created", sub("sub_B", "active", T0 + DAY), T0 + DAY),
            ev("invoice.payment_failed", invoice("in_A2", "sub_A", "open"), RENEWAL),
            ev("customer.subscription.deleted", sub("sub_A", "canceled", T0), ENDED),
            ev("invoice.paid", invoice("in_A2", "sub_A", "paid"), ENDED + DAY),
        ]

    def test_it_is_recorded_as_an_ended_subscriptions(self, table):
        final, steps = replay(table, start(table), self.events())
        assert steps[-2].outcome.other_subscription      # A's end, while B is followed
        assert steps[-1].outcome.ended_subscription and not steps[-1].outcome.other_subscription
        assert final.status == "paid" and final.follows.id == "sub_B"

    def test_a_transition_for_other_subscriptions_does_not_hear_it(self, write_plan):
        text = plan_text(False).replace("  - from: [overdue, suspended]\n    on: stripe:invoice.paid\n",
                                        "  - from: paid\n    on: stripe:invoice.paid\n    subscription: other\n"
                                        "    to: suspended\n  - from: [overdue, suspended]\n"
                                        "    on: stripe:invoice.paid\n")
        other = write_plan(text)
        final, steps = replay(other, start(other), self.events())
        assert final.status == "paid" and steps[-1].outcome.ended_subscription
