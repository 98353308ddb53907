"""Several Stripe subscriptions per subject: which one the status follows, and what another one's events do.

The plan is tests/plans/several-subscriptions.yaml; its `subscription: other` transition (the add-on's end) is
kept or dropped per test.
"""
from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import pytest

from plangate.engine import StripeEvent, Subscription, followed, replay, stripe_refs, subscription_of

PLAN = Path(__file__).resolve().parents[1] / "plans" / "several-subscriptions.yaml"
T0 = 1_800_000_000.0
DAY = 86400.0


def plan_text(addon_switch: bool) -> str:
    text = PLAN.read_text(encoding="utf-8")
    if not addon_switch:
        start = text.index("  # ADD-ON")
        end = text.index("  - from", text.index("to: without_addon", start))
        text = text[:start] + text[end:]
    return text


@pytest.fixture
def table(write_plan):
    """The plan without the add-on's transition: an old subscription's end is no add-on's."""
    return write_plan(plan_text(False))


def sub(ident: str, status: str, created: float, *, price: str = "price_pro_monthly", **extra) -> dict:
    return {"id": ident, "object": "subscription", "status": status, "customer": "cus_1", "created": int(created),
            "items": {"object": "list", "data": [{"id": f"si_{ident}", "price": {"id": price},
                                                  "current_period_start": int(created),
                                                  "current_period_end": int(created + 30 * DAY)}]}, **extra}


def invoice(ident: str, subscription: str, status: str) -> dict:
    return {"id": ident, "object": "invoice", "status": status, "customer": "cus_1",
            "parent": {"type": "subscription_details", "subscription_details": {"subscription": subscription}}}


def ev(type_: str, obj: dict, created: float, ident: str | None = None) -> StripeEvent:
    return StripeEvent(type_, obj, ident or f"evt_{type_}_{obj['id']}_{int(created)}", created)


def resubscribe_during_dunning() -> list[StripeEvent]:
    """A is paid, its renewal fails (past_due); the customer subscribes again (B, paid at once); Stripe retries A's
    invoice and fails again, then cancels A by dunning two weeks later."""
    return [
        ev("customer.subscription.created", sub("sub_A", "active", T0), T0),
        ev("invoice.payment_failed", invoice("in_A2", "sub_A", "open"), T0 + 30 * DAY),
        ev("customer.subscription.updated", sub("sub_A", "past_due", T0), T0 + 30 * DAY + 1),
        ev("customer.subscription.created", sub("sub_B", "active", T0 + 31 * DAY), T0 + 31 * DAY),
        ev("invoice.paid", invoice("in_B1", "sub_B", "paid"), T0 + 31 * DAY),
        ev("invoice.payment_failed", invoice("in_A2", "sub_A", "open"), T0 + 35 * DAY, "evt_retry_A"),
        ev("customer.subscription.deleted", sub("sub_A", "canceled", T0, ended_at=int(T0 + 45 * DAY)),
           T0 + 45 * DAY),
    ]


class TestWhichSubscriptionIsFollowed:
    def test_the_newest_live_one(self):
        subs = (Subscription("sub_A", "past_due", T0, "pro"), Subscription("sub_B", "active", T0 + 5, "pro"))
        assert followed(subs).id == "sub_B"

    def test_a_live_one_before_an_ended_newer_one(self):
        subs = (Subscription("sub_A", "past_due", T0, "pro"),
                Subscription("sub_B", "canceled", T0 + 5, "pro", ended_at=T0 + 9))
        assert followed(subs).id == "sub_A"

    def test_when_all_ended_the_one_that_ended_last(self):
        subs = (Subscription("sub_A", "canceled", T0, "pro", ended_at=T0 + 20),
                Subscription("sub_B", "canceled", T0 + 5, "pro", ended_at=T0 + 9))
        assert followed(subs).id == "sub_A"

    def test_the_plans_own_product_before_an_add_on(self):
        subs = (Subscription("sub_A", "active", T0, "pro"), Subscription("sub_C", "active", T0 + 5, None))
        assert followed(subs).id == "sub_A"

    def test_one_known_only_from_an_invoice_counts_as_older(self):
        subs = (Subscription("sub_old", None, None, None), Subscription("sub_new", "active", T0, "pro"))
        assert followed(subs).id == "sub_new"

    def test_one_known_only_from_its_checkout_is_no_add_on(self):
        subs = (Subscription("sub_A", "past_due", T0, "pro"), Subscription("sub_B", None, T0 + 5, None))
        assert followed(subs).id == "sub_B"

    def test_prices_the_plan_does_not_know_alone_are_followed_like_any(self):
        """A plan without tiers (or without default_tier) follows subscriptions whose prices select no tier."""
        subs = (Subscription("sub_C", "active", T0, None), Subscription("sub_D", "active", T0 + 5, None))
        assert followed(subs).id == "sub_D"

    def test_one_buying_only_the_plans_add_ons_is_never_followed(self):
        extra = (("extra", 1),)
        assert followed((Subscription("sub_C", "active", T0, None, addons=extra),)) is None
        subs = (Subscription("sub_C", "active", T0 + 5, None, addons=extra), Subscription("sub_D", "active", T0, None))
        assert followed(subs).id == "sub_D"

    def test_an_incomplete_one_never_paid_does_not_displace_a_serving_one(self):
        """Stripe's default_incomplete payment form makes a subscription `incomplete` until its first payment:
        it serves nothing yet, and an abandoned one muted every event of the one the customer pays for."""
        subs = (Subscription("sub_A", "active", T0, "pro"), Subscription("sub_B", "incomplete", T0 + 5, "pro"))
        assert followed(subs).id == "sub_A"

    def test_an_incomplete_one_begun_after_the_last_end_is_followed(self):
        subs = (Subscription("sub_A", "canceled", T0, "pro", ended_at=T0 + 10),
                Subscription("sub_B", "incomplete", T0 + 20, "pro"))
        assert followed(subs).id == "sub_B"
        subs = (Subscription("sub_A", "canceled", T0, "pro", ended_at=T0 + 30),
                Subscription("sub_B", "incomplete", T0 + 20, "pro"))
        assert followed(subs).id == "sub_A"

    def test_none(self):
        assert followed(()) is None

    @pytest.mark.parametrize("obj, expected", [
        ({"object": "subscription", "id": "sub_1"}, "sub_1"),
        ({"object": "invoice", "subscription": "sub_2"}, "sub_2"),
        ({"object": "invoice", "parent": {"subscription_details": {"subscription": "sub_3"}}}, "sub_3"),
        ({"object": "checkout.session", "subscription": "sub_4"}, "sub_4"),
        ({"object": "checkout.session", "subscription": None}, None),
        ({"object": "charge", "id": "ch_1", "customer": "cus_1"}, None),
    ])
    def test_what_an_object_is_about(self, obj, expected):
        assert subscription_of(obj) == expected


class TestResubscribeDuringDunning:
    def test_the_old_subscriptions_end_leaves_the_subject_on_the_new_ones_status(self, table):
        final, steps = replay(table, table.initial_state("u", T0 - 10), resubscribe_during_dunning())
        assert [s.outcome.state.status for s in steps] == \
            ["paid", "grace", "grace", "paid", "paid", "paid", "paid"]
        assert [s.outcome.other_subscription for s in steps] == [False] * 5 + [True, True]
        assert "about subscription sub_A, but the subject's status follows sub_B" in steps[-1].outcome.reason
        assert final.status == "paid" and final.follows.id == "sub_B"
        assert {s.id: s.status for s in final.subscriptions} == {"sub_A": "canceled", "sub_B": "active"}
        assert final.subscriptions[0].ended_at == T0 + 45 * DAY
        assert final.period_start == T0 + 31 * DAY        # B's period, not A's

    def test_every_order_of_delivery_folds_to_the_same_state(self, table):
        events = resubscribe_during_dunning()
        expected, _ = replay(table, table.initial_state("u", T0 - 10), events)
        for order in itertools.islice(itertools.permutations(events), 0, None, 97):
            assert replay(table, table.initial_state("u", T0 - 10), order)[0] == expected

    def test_when_the_followed_one_ends_the_live_one_is_followed_and_the_end_moves_nothing(self, table):
        events = resubscribe_during_dunning()[:5] + [
            ev("customer.subscription.deleted", sub("sub_B", "canceled", T0 + 31 * DAY), T0 + 33 * DAY)]
        final, steps = replay(table, table.initial_state("u", T0 - 10), events)
        assert steps[-1].outcome.other_subscription and final.follows.id == "sub_A"
        assert final.status == "paid"
        assert final.period_start == T0      # A's period, as the gate knows it, until A's next event says more
        # A's own end is the subject's end now.
        final, steps = replay(table, final, [ev("customer.subscription.deleted", sub("sub_A", "canceled", T0),
                                                T0 + 45 * DAY)])
        assert final.status == "canceled" and not steps[-1].outcome.other_subscription

    def test_the_only_subscriptions_end_cancels(self, table):
        events = resubscribe_during_dunning()[:1] + [
            ev("customer.subscription.deleted", sub("sub_A", "canceled", T0), T0 + 10 * DAY)]
        final, _ = replay(table, table.initial_state("u", T0 - 10), events)
        assert final.status == "canceled" and final.follows.id == "sub_A"


def paid(ident: str, subscription: str, start: float, end: float) -> dict:
    """A paid invoice whose one line covers start..end."""
    return {**invoice(ident, subscription, "paid"),
            "lines": {"object": "list", "data": [{"period": {"start": int(start), "end": int(end)}}]}}


class TestPaidThroughIsEachSubscriptions:
    """A yearly subscription (A) canceled in its second month, and a monthly one (B) taken two months later whose
    first renewal fails: B's grace runs its three days from the failure, whatever A had been paid through."""

    def events(self) -> list[StripeEvent]:
        return [
            ev("customer.subscription.created", sub("sub_A", "active", T0), T0),
            ev("invoice.paid", paid("in_A1", "sub_A", T0, T0 + 365 * DAY), T0),
            ev("customer.subscription.deleted", sub("sub_A", "canceled", T0, ended_at=int(T0 + 40 * DAY)),
               T0 + 40 * DAY),
            ev("customer.subscription.created", sub("sub_B", "active", T0 + 60 * DAY), T0 + 60 * DAY),
            ev("invoice.paid", paid("in_B1", "sub_B", T0 + 60 * DAY, T0 + 90 * DAY), T0 + 60 * DAY),
            ev("invoice.payment_failed", invoice("in_B2", "sub_B", "open"), T0 + 90 * DAY),
        ]

    def test_a_failed_renewal_of_the_new_one_is_not_held_open_by_the_old_ones_payment(self, table):
        final, steps = replay(table, table.initial_state("u", T0 - 10), self.events())
        assert [s.outcome.state.status for s in steps] == ["paid", "paid", "canceled", "paid", "paid", "grace"]
        assert final.follows.id == "sub_B"
        assert final.paid_through == T0 + 90 * DAY
        assert final.timer_due == T0 + 93 * DAY      # three days of grace, not until A's year ends

    def test_each_subscription_keeps_what_its_own_invoices_paid_for(self, table):
        final, _ = replay(table, table.initial_state("u", T0 - 10), self.events())
        assert {s.id: s.paid_through for s in final.subscriptions} == \
            {"sub_A": T0 + 365 * DAY, "sub_B": T0 + 90 * DAY}

    def test_an_invoice_paid_before_its_subscription_is_followed_counts_once_it_is(self, table):
        """B begins incomplete while A is paid (A is followed), B's first invoice is paid, and B turns active: the
        subject follows B from then on, and B's payment (a year) bounds its grace, not A's month."""
        b = T0 + 10 * DAY
        events = [
            ev("customer.subscription.created", sub("sub_A", "active", T0), T0),
            ev("invoice.paid", paid("in_A1", "sub_A", T0, T0 + 30 * DAY), T0),
            ev("customer.subscription.created", sub("sub_B", "incomplete", b), b),
            ev("invoice.paid", paid("in_B1", "sub_B", b, b + 365 * DAY), b + 1),
            ev("customer.subscription.updated", sub("sub_B", "active", b), b + 2),
        ]
        final, steps = replay(table, table.initial_state("u", T0 - 10), events)
        assert steps[3].outcome.other_subscription      # B's payment, while A is followed: not the subject's yet
        assert final.follows.id == "sub_B" and final.paid_through == b + 365 * DAY
        # Back to A when B ends at once: A's month again.
        final, _ = replay(table, final, [ev("customer.subscription.deleted", sub("sub_B", "canceled", b),
                                            b + 3 * DAY)])
        assert final.follows.id == "sub_A" and final.paid_through == T0 + 30 * DAY

    def test_every_order_of_delivery_folds_to_the_same_state(self, table):
        events = self.events()
        expected, _ = replay(table, table.initial_state("u", T0 - 10), events)
        for order in itertools.islice(itertools.permutations(events), 0, None, 7):
            assert replay(table, table.initial_state("u", T0 - 10), order)[0] == expected

    def test_a_paid_subscription_that_lives_on_still_holds_the_grace_open(self, table):
        """A yearly subscription (A), paid and live, and a monthly one (B) added later, which the subject follows:
        B's failed renewal leaves the customer in grace while A stays paid, as before paid-through was kept per
        subscription (only an ended subscription's payment stopped counting)."""
        events = [
            ev("customer.subscription.created", sub("sub_A", "active", T0), T0),
            ev("invoice.paid", paid("in_A1", "sub_A", T0, T0 + 365 * DAY), T0),
            ev("customer.subscription.created", sub("sub_B", "active", T0 + 40 * DAY), T0 + 40 * DAY),
            ev("invoice.paid", paid("in_B1", "sub_B", T0 + 40 * DAY, T0 + 70 * DAY), T0 + 40 * DAY),
            ev("invoice.payment_failed", invoice("in_B2", "sub_B", "open"), T0 + 70 * DAY),
        ]
        final, _ = replay(table, table.initial_state("u", T0 - 10), events)
        assert (final.status, final.follows.id) == ("grace", "sub_B")
        assert final.paid_through == T0 + 365 * DAY and final.timer_due == T0 + 365 * DAY

    def test_a_state_stored_before_the_dates_were_kept_apart_keeps_its_date(self, table):
        """A subject stored before each subscription kept its own date: its one date was the followed subscription's.
        A trial taken beside it and canceled must not lose it when the subject follows the paid one again."""
        events = [ev("customer.subscription.created", sub("sub_A", "active", T0), T0),
                  ev("invoice.paid", paid("in_A1", "sub_A", T0, T0 + 365 * DAY), T0)]
        stored, _ = replay(table, table.initial_state("u", T0 - 10), events)
        stored = stored.with_(subscriptions=tuple(replace(s, paid_through=None) for s in stored.subscriptions))
        assert stored.paid_through == T0 + 365 * DAY
        later = [ev("customer.subscription.created", sub("sub_B", "trialing", T0 + 40 * DAY), T0 + 40 * DAY),
                 ev("customer.subscription.deleted", sub("sub_B", "canceled", T0 + 40 * DAY), T0 + 45 * DAY)]
        final, _ = replay(table, stored, later)
        assert final.follows.id == "sub_A" and final.paid_through == T0 + 365 * DAY

    def test_a_record_stored_before_it_was_kept_reads_as_not_known(self):
        stored = Subscription("sub_A", "active", T0, "pro", paid_through=T0 + DAY).to_dict()
        assert Subscription.from_dict(stored).paid_through == T0 + DAY
        del stored["paid_through"]
        assert Subscription.from_dict(stored).paid_through is None


class TestAbandonedSecondSubscription:
    """A is set to cancel at its period's end; hours before that end the product's payment form starts B
    (default_incomplete) and the customer leaves it unpaid. A ends; B expires 23 hours after it began."""

    def events(self) -> list[StripeEvent]:
        end = T0 + 30 * DAY
        b0 = end - 6 * 3600
        return [
            ev("customer.subscription.created", sub("sub_A", "active", T0), T0),
            ev("invoice.paid", invoice("in_A1", "sub_A", "paid"), T0),
            ev("customer.subscription.updated", sub("sub_A", "active", T0, cancel_at_period_end=True,
                                                    cancel_at=int(end)), T0 + 20 * DAY),
            ev("customer.subscription.created", sub("sub_B", "incomplete", b0), b0),
            ev("invoice.finalized", invoice("in_B1", "sub_B", "open"), b0),
            ev("customer.subscription.deleted", sub("sub_A", "canceled", T0, ended_at=int(end)), end),
            ev("customer.subscription.updated", sub("sub_B", "incomplete_expired", b0), b0 + 23 * 3600),
        ]

    def test_the_paid_ones_end_cancels_and_the_expiry_leaves_it_so(self, table):
        events = self.events()
        final, steps = replay(table, table.initial_state("u", T0 - 10), events[:-1])
        assert final.status == "canceled" and final.follows.id == "sub_A"
        final, _ = replay(table, table.initial_state("u", T0 - 10), events)
        assert final.status == "canceled"

    def test_every_order_of_delivery_folds_to_the_same_state(self, table):
        events = self.events()
        expected, _ = replay(table, table.initial_state("u", T0 - 10), events)
        for order in itertools.islice(itertools.permutations(events), 0, None, 101):
            assert replay(table, table.initial_state("u", T0 - 10), order)[0] == expected

    def test_paid_after_all_it_is_followed(self, table):
        """The customer comes back to the form and pays B before A ends: B serves, A's end moves nothing."""
        events = self.events()[:5]
        b0 = events[3].created
        events += [ev("customer.subscription.updated", sub("sub_B", "active", b0), b0 + 600),
                   ev("invoice.paid", invoice("in_B1", "sub_B", "paid"), b0 + 600),
                   ev("customer.subscription.deleted", sub("sub_A", "canceled", T0, ended_at=int(T0 + 30 * DAY)),
                      T0 + 30 * DAY)]
        final, _ = replay(table, table.initial_state("u", T0 - 10), events)
        assert final.status == "paid" and final.follows.id == "sub_B"


class TestOneOffInvoice:
    """An invoice of no subscription (`parent: null`, billing_reason manual: a one-off charge) is not the
    followed subscription's: its payment does not end a renewal's failure, its failure does not start one."""

    def one_off(self, status: str) -> dict:
        return {"id": f"in_once_{status}", "object": "invoice", "status": status, "customer": "cus_1",
                "parent": None, "billing_reason": "manual", "amount_paid": 5000 if status == "paid" else 0}

    def test_its_failure_leaves_a_paid_subscriber_paid(self, table):
        events = resubscribe_during_dunning()[:1] + [ev("invoice.payment_failed", self.one_off("open"), T0 + DAY)]
        final, steps = replay(table, table.initial_state("u", T0 - 10), events)
        assert final.status == "paid" and steps[-1].outcome.other_subscription
        assert "one-off invoice" in steps[-1].outcome.reason and final.period_end == T0 + 30 * DAY

    def test_its_payment_does_not_end_the_subscriptions_failure(self, table):
        events = resubscribe_during_dunning()[:3] + [ev("invoice.paid", self.one_off("paid"), T0 + 31 * DAY)]
        final, steps = replay(table, table.initial_state("u", T0 - 10), events)
        assert final.status == "grace" and steps[-1].outcome.other_subscription

    def test_without_a_subscription_it_is_the_subjects_as_ever(self, table):
        final, steps = replay(table, table.initial_state("u", T0 - 10),
                              [ev("invoice.payment_failed", self.one_off("open"), T0)])
        assert not steps[-1].outcome.other_subscription and final.status == "free"


class TestPriceNoTierLists:
    def events(self):
        return [
            ev("customer.subscription.created", sub("sub_A", "active", T0), T0),
            ev("customer.subscription.deleted", sub("sub_A", "canceled", T0), T0 + 30 * DAY),
            ev("customer.subscription.created", sub("sub_P", "active", T0 + 40 * DAY, price="price_promo"),
               T0 + 40 * DAY),
        ]

    def test_with_a_default_tier_it_selects_that_tier(self, table):
        final, steps = replay(table, table.initial_state("u", T0 - 10), self.events())
        assert final.follows.id == "sub_P" and final.follows.tier == "pro"
        assert (final.status, final.tier) == ("paid", "pro") and not steps[-1].outcome.other_subscription

    def test_without_one_it_is_an_add_on_and_the_ended_one_stays_followed(self, write_plan):
        table = write_plan(plan_text(False).replace("default_tier: pro\n", ""))
        final, steps = replay(table, table.initial_state("u", T0 - 10), self.events())
        assert final.follows.id == "sub_A" and final.status == "canceled"
        assert steps[-1].outcome.other_subscription

    def test_a_subscription_buying_only_the_plans_add_ons_stays_an_add_on(self, table):
        events = self.events()[:2] + [
            ev("customer.subscription.created", sub("sub_C", "active", T0 + 40 * DAY, price="price_addon"),
               T0 + 40 * DAY)]
        final, _ = replay(table, table.initial_state("u", T0 - 10), events)
        assert final.follows.id == "sub_A" and final.status == "canceled" and final.addons == (("extra", 1),)


class TestAddOnAlone:
    """A subscription buying only the plan's add-ons, on a subject with no subscription to a tier."""

    def test_it_is_recorded_and_neither_moves_the_subject_nor_gives_it_a_tier(self, table):
        events = [ev("customer.subscription.created", sub("sub_C", "active", T0, price="price_addon"), T0),
                  ev("invoice.paid", invoice("in_C1", "sub_C", "paid"), T0 + 1)]
        final, steps = replay(table, table.initial_state("u", T0 - 10), events)
        assert (final.status, final.tier, final.follows, final.paid_through) == ("free", None, None, None)
        assert final.addons == (("extra", 1),)
        assert all(s.outcome.other_subscription and not s.outcome.moved for s in steps)
        assert "the subject's status follows no subscription" in steps[0].outcome.reason

    def test_a_plan_bought_after_it_is_followed_whatever_the_order(self, table):
        events = [ev("customer.subscription.created", sub("sub_C", "active", T0, price="price_addon"), T0),
                  ev("customer.subscription.created", sub("sub_A", "active", T0 + DAY), T0 + DAY)]
        for order in itertools.permutations(events):
            final, _ = replay(table, table.initial_state("u", T0 - 10), list(order))
            assert (final.status, final.tier, final.follows.id, final.addons) == ("paid", "pro", "sub_A",
                                                                                  (("extra", 1),))
            assert final.period_end == T0 + 31 * DAY        # the plan's period, not the add-on's

    def test_a_transition_for_other_subscriptions_still_hears_it(self, write_plan):
        """`subscription: other` is the plan's word: an add-on's end moves a paid subject even with no plan
        subscription followed (an admin moved it to paid)."""
        table = write_plan(plan_text(True))
        state = table.initial_state("u", T0 - 10).with_(status="paid")
        events = [ev("customer.subscription.created", sub("sub_C", "active", T0, price="price_addon"), T0),
                  ev("customer.subscription.deleted", sub("sub_C", "canceled", T0, price="price_addon"), T0 + DAY)]
        final, steps = replay(table, state, events)
        assert final.status == "without_addon" and steps[-1].outcome.moved and final.follows is None


class TestAddOn:
    def events(self):
        return [
            ev("customer.subscription.created", sub("sub_A", "active", T0), T0),
            ev("customer.subscription.created", sub("sub_C", "active", T0 + DAY, price="price_addon"), T0 + DAY),
            ev("invoice.paid", invoice("in_C1", "sub_C", "paid"), T0 + DAY),
            ev("customer.subscription.deleted", sub("sub_C", "canceled", T0 + DAY, price="price_addon"),
               T0 + 9 * DAY),
        ]

    def test_the_add_ons_end_moves_the_subject_where_the_plan_says(self, write_plan):
        table = write_plan(plan_text(True))
        final, steps = replay(table, table.initial_state("u", T0 - 10), self.events())
        assert final.status == "without_addon" and steps[-1].outcome.moved
        assert "(about sub_C; the subject follows sub_A)" in steps[-1].outcome.reason
        assert final.follows.id == "sub_A" and final.period_end == T0 + 30 * DAY    # A's period, not C's

    def test_without_the_switch_it_is_recorded_and_moves_nothing(self, write_plan):
        table = write_plan(plan_text(False))
        final, steps = replay(table, table.initial_state("u", T0 - 10), self.events())
        assert final.status == "paid" and steps[-1].outcome.other_subscription
        assert not steps[-1].outcome.moved

    def test_the_followed_subscriptions_end_is_not_heard_by_an_other_transition(self, write_plan):
        table = write_plan(plan_text(True))
        events = self.events()[:1] + [ev("customer.subscription.deleted", sub("sub_A", "canceled", T0), T0 + DAY)]
        final, _ = replay(table, table.initial_state("u", T0 - 10), events)
        assert final.status == "canceled"


class TestRefs:
    @pytest.mark.parametrize("obj, expected", [
        ({"object": "charge", "id": "ch_1", "customer": "cus_1", "payment_intent": "pi_1"},
         ("cus_1", None, "ch_1", "pi_1")),
        ({"object": "dispute", "id": "dp_1", "charge": "ch_1", "payment_intent": "pi_1"},
         (None, None, "ch_1", "pi_1")),
        ({"object": "refund", "id": "re_1", "charge": {"id": "ch_1"}, "payment_intent": None},
         (None, None, "ch_1", None)),
        ({"object": "payment_intent", "id": "pi_1", "customer": "cus_1", "latest_charge": "ch_1"},
         ("cus_1", None, "ch_1", "pi_1")),
        ({"object": "invoice", "id": "in_1", "customer": "cus_1", "subscription": "sub_1", "charge": "ch_1",
          "payment_intent": "pi_1"}, ("cus_1", "sub_1", "ch_1", "pi_1")),
        ({"object": "invoice", "id": "in_1", "customer": "cus_1",
          "parent": {"subscription_details": {"subscription": "sub_1"}},
          "payments": {"data": [{"status": "canceled", "payment": {"type": "payment_intent", "payment_intent": "pi_0"}},
                                {"status": "paid", "payment": {"type": "payment_intent", "payment_intent": "pi_1"}}]}},
         ("cus_1", "sub_1", None, "pi_1")),
        ({"object": "invoice_payment", "invoice": "in_1", "payment": {"type": "charge", "charge": "ch_1"}},
         (None, None, "ch_1", None)),
        ({"object": "customer", "id": "cus_1"}, ("cus_1", None, None, None)),
    ])
    def test_the_ids_each_object_names(self, obj, expected):
        refs = stripe_refs(obj)
        assert (refs.customer, refs.subscription, refs.charge, refs.payment_intent) == expected

    def test_a_dispute_names_only_its_payment(self):
        assert stripe_refs({"object": "dispute", "charge": "ch_1"}).only_payments
        assert not stripe_refs({"object": "charge", "id": "ch_1", "customer": "cus_1"}).only_payments
