"""Charges, refunds and disputes linked to their subject, through a real gate on each store (a SQLite file, a real
PostgreSQL): by customer, by a charge or payment intent seen before, and pending until such a link appears.
(Asking Stripe's API whose a charge is: tests/e2e/test_stripe_links.py.)
"""
from __future__ import annotations

import time

import pytest

from . import stripe_events as se
from .stripe_lifecycles import DAY, Life, charge, dispute, invoice
from .test_webhook_subscriptions import outcomes, play, start, view  # noqa: F401 (start is a fixture)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def paid_customer(n: int) -> Life:
    """A customer who subscribed 20 days ago and paid: its charge ch_in_A{n}_1, payment intent pi_in_A{n}_1."""
    life = Life(n, f"user{n}", time.time() - 20 * DAY)
    life.subscribe("A", life.start)
    return life


def evt(life: Life, type_: str, obj: dict, days: float) -> dict:
    return life.add(type_, obj, life.start + days * DAY)


class TestDisputes:
    async def test_a_dispute_is_linked_by_the_charge_seen_before(self, start):
        gate = await start()
        life = paid_customer(1)
        await play(gate, life.events)
        opened = evt(life, "charge.dispute.created", dispute("dp_1", "needs_response", charge="ch_in_A1_1",
                                                             payment_intent="pi_in_A1_1"), 5)
        (answer,) = await play(gate, [opened])
        assert (answer["outcome"], answer["subject"], answer["status"]) == ("applied", "user1", "disputed")
        won = evt(life, "charge.dispute.closed", dispute("dp_1", "won", charge="ch_in_A1_1",
                                                         payment_intent="pi_in_A1_1"), 12)
        (answer,) = await play(gate, [won])
        assert (answer["outcome"], answer["status"]) == ("applied", "paid")

    async def test_by_the_payment_intent_alone(self, start):
        gate = await start()
        life = paid_customer(2)
        await play(gate, life.events)
        opened = evt(life, "charge.dispute.created", dispute("dp_2", "needs_response", charge="ch_unseen",
                                                             payment_intent="pi_in_A2_1"), 5)
        (answer,) = await play(gate, [opened])
        assert (answer["subject"], answer["status"]) == ("user2", "disputed")

    async def test_by_the_charge_an_invoice_of_the_old_shape_named(self, start):
        gate = await start()
        life = Life(3, "user3", time.time() - 20 * DAY)
        life.subscribe("A", life.start)
        old = invoice("in_old3", "paid", subscription=life.sub_id("A"), customer=life.customer,
                      period=(life.start + 10 * DAY, life.start + 40 * DAY))
        old.pop("parent")
        old.update(subscription=life.sub_id("A"), charge="ch_old3", payment_intent="pi_old3")
        evt(life, "invoice.paid", old, 10)
        await play(gate, life.events)
        opened = evt(life, "charge.dispute.created", dispute("dp_3", "needs_response", charge="ch_old3",
                                                             payment_intent=None), 12)
        (answer,) = await play(gate, [opened])
        assert (answer["subject"], answer["status"]) == ("user3", "disputed")

    async def test_a_dispute_of_a_charge_not_seen_waits_and_is_adopted_when_the_charge_appears(self, start):
        """No STRIPE_SECRET_KEY: nothing to ask. The dispute waits (pending) until an event of the subject names
        its charge (here the charge's own charge.succeeded, delivered late), then folds in at its created time."""
        gate = await start()
        life = paid_customer(4)
        succeeded = next(e for e in life.events if e["type"] == "charge.succeeded")
        early = [e for e in life.events if e is not succeeded]
        await play(gate, early)
        opened = evt(life, "charge.dispute.created", dispute("dp_4", "needs_response", charge="ch_in_A4_1",
                                                             payment_intent=None), 5)
        (answer,) = await play(gate, [opened])
        assert (answer["outcome"], answer["subject"]) == ("pending", None)
        assert (await view(gate, "user4"))["status"] == "paid"
        (answer,) = await play(gate, [succeeded])
        assert answer["status"] == "disputed"
        assert (await view(gate, "user4"))["status"] == "disputed"
        assert (await outcomes(gate, "user4"))[opened["id"]] == ("charge.dispute.created", "applied")

    @pytest.mark.parametrize("linked", ["payment_intent", "charge"])
    async def test_a_waiting_dispute_is_adopted_by_either_payment_id_it_names(self, start, linked):
        """The dispute names its charge and payment intent, neither seen yet: it waits. The invoice that was paid
        with them (the current shape, its payments expanded) names only the payment intent, or (the old shape)
        only the charge: either links the dispute to the invoice's subject."""
        gate = await start()
        life = paid_customer(12)
        await play(gate, life.events)
        opened = evt(life, "charge.dispute.created", dispute("dp_12", "needs_response", charge="ch_12",
                                                             payment_intent="pi_12"), 12)
        (answer,) = await play(gate, [opened])
        assert (answer["outcome"], answer["subject"]) == ("pending", None)
        paid = _paid_by("pi_12", life)
        if linked == "charge":
            paid.pop("payments")
            paid.pop("parent")
            paid.update(subscription=life.sub_id("A"), charge="ch_12", payment_intent=None)
        (answer,) = await play(gate, [evt(life, "invoice.paid", paid, 10)])
        assert (answer["subject"], answer["status"]) == ("user12", "disputed")
        assert (await outcomes(gate, "user12"))[opened["id"]] == ("charge.dispute.created", "applied")

    async def test_a_dispute_recorded_without_a_transition_still_is_the_subjects(self, start):
        """The plan has no transition on funds_withdrawn: the event is kept in the subject's record (a fact)."""
        gate = await start()
        life = paid_customer(5)
        await play(gate, life.events)
        withdrawn = evt(life, "charge.dispute.funds_withdrawn",
                        dispute("dp_5", "needs_response", charge="ch_in_A5_1", payment_intent="pi_in_A5_1"), 5)
        (answer,) = await play(gate, [withdrawn])
        assert (answer["outcome"], answer["subject"], answer["status"]) == ("noop", "user5", "paid")
        assert (await outcomes(gate, "user5"))[withdrawn["id"]] == ("charge.dispute.funds_withdrawn", "noop")


class TestDisputesWaitingBeforeTheUpgrade:
    async def test_the_migration_gives_a_waiting_dispute_its_payment_intent(self, start_gate, each_database,
                                                                             tmp_path):
        """A dispute stored pending by a gate before the payment intent beside its charge was kept: the migration
        reads it from its payload, and the invoice naming only the payment intent adopts it."""
        from .test_webhook_subscriptions import QUIET, plan_file
        database = each_database
        first = await start_gate(plan=plan_file(tmp_path, False), database=database, **QUIET)
        life = paid_customer(13)
        await play(first, life.events)
        opened = evt(life, "charge.dispute.created", dispute("dp_13", "needs_response", charge="ch_13",
                                                             payment_intent="pi_13"), 12)
        (answer,) = await play(first, [opened])
        assert answer["outcome"] == "pending"
        await first.app.shutdown()
        await first.app.cleanup()
        await _before_migration_15(database)
        second = await start_gate(plan=plan_file(tmp_path, False), database=database, **QUIET)
        (answer,) = await play(second, [evt(life, "invoice.paid", _paid_by("pi_13", life), 10)])
        assert (answer["subject"], answer["status"]) == ("user13", "disputed")


def _paid_by(payment_intent: str, life: Life) -> dict:
    """An invoice of the current shape paid by the payment intent (its payments expanded): it names no charge."""
    obj = invoice(f"in_{payment_intent}", "paid", subscription=life.sub_id("A"), customer=life.customer,
                  period=(life.start + 10 * DAY, life.start + 30 * DAY), reason="subscription_update")
    obj["payments"] = {"object": "list", "has_more": False, "data": [{
        "id": f"inpay_{payment_intent}", "object": "invoice_payment", "status": "paid", "is_default": True,
        "payment": {"type": "payment_intent", "payment_intent": payment_intent}}]}
    return obj


async def _before_migration_15(database: str) -> None:
    """Undo migration 15 (the payment intent of pending events), its data with it, and those after it."""
    later = ["ALTER TABLE console_sessions DROP COLUMN token_mac",  # 20
             "ALTER TABLE credit_grants DROP COLUMN tier_since",    # 19
             "ALTER TABLE quota_usage DROP COLUMN billed",          # 18 (plangate_spend is replaced when it runs again)
             "ALTER TABLE subscriptions DROP COLUMN tier_since",    # 17
             "DROP TABLE credit_reversals", "DROP INDEX credit_grants_by_payment_intent",      # 16
             "ALTER TABLE credit_grants DROP COLUMN stripe_payment_intent", "ALTER TABLE credit_grants DROP COLUMN paid"]
    undo = later + ["DROP INDEX subscription_events_pending_by_payment_intent",
                    "ALTER TABLE subscription_events DROP COLUMN stripe_payment_intent"]
    if database.startswith("postgresql://"):
        import asyncpg
        conn = await asyncpg.connect(database)
        try:
            for sql in undo + ["DELETE FROM plangate_schema WHERE version >= 15"]:
                await conn.execute(sql)
        finally:
            await conn.close()
        return
    import sqlite3
    with sqlite3.connect(database) as db:
        for sql in undo + ["PRAGMA user_version = 14"]:
            db.execute(sql)


class TestRefunds:
    async def test_a_refund_is_linked_by_its_customer(self, start):
        gate = await start()
        life = paid_customer(6)
        await play(gate, life.events)
        refunded = evt(life, "charge.refunded", charge("ch_in_A6_1", customer=life.customer,
                                                       payment_intent="pi_in_A6_1", refunded=2000), 3)
        (answer,) = await play(gate, [refunded])
        assert (answer["outcome"], answer["subject"]) == ("noop", "user6")
        assert (await outcomes(gate, "user6"))[refunded["id"]] == ("charge.refunded", "noop")

    async def test_a_refund_of_an_unknown_customer_waits_for_the_checkout_that_links_it(self, start):
        gate = await start()
        life = paid_customer(7)
        refunded = life.add("charge.refunded", charge("ch_in_A7_1", customer=life.customer,
                                                      payment_intent="pi_in_A7_1", refunded=2000),
                            life.start + 3 * DAY)
        (answer,) = await play(gate, [refunded])
        assert (answer["outcome"], answer["subject"]) == ("pending", None)
        await play(gate, life.events[:-1])
        assert (await outcomes(gate, "user7"))[refunded["id"]] == ("charge.refunded", "noop")

    async def test_an_event_naming_no_stripe_id_is_ignored(self, start):
        gate = await start()
        life = Life(8, "user8", time.time())
        lone = life.add("charge.dispute.created", {"id": "dp_8", "object": "dispute", "status": "needs_response"},
                        time.time())
        (answer,) = await play(gate, [lone])
        assert answer["outcome"] == "ignored"


class TestLinksSurviveTheSubscription:
    async def test_a_late_event_of_an_old_subscription_finds_its_subject_by_that_subscription(self, start):
        """The subject now follows B; an event naming only A (and another customer id, as after a customer
        merge) still finds the subject, through the link of A kept when A was first seen."""
        gate = await start()
        life = paid_customer(9)
        life.subscribe("B", life.start + 2 * DAY)
        await play(gate, life.events)
        late = invoice("in_A9_late", "open", subscription=life.sub_id("A"), customer="cus_other",
                       period=(life.start, life.start + 30 * DAY), attempts=1)
        (answer,) = await play(gate, [se.event("invoice.payment_failed", late, life.start + 3 * DAY, "evt_9_late")])
        assert (answer["subject"], answer["outcome"]) == ("user9", "other_subscription")


class TestStaleEventsStillLink:
    """An event older than an admin's change of its subject is recorded `stale` (the person's decision stands),
    but what it says of whose Stripe ids are is still true: the ids are linked all the same."""

    async def test_a_dispute_finds_its_subject_by_a_charge_that_arrived_stale(self, start):
        gate = await start()
        life = paid_customer(10)
        late = next(e for e in life.events if e["type"] == "charge.succeeded")
        await play(gate, [e for e in life.events if e is not late])
        status, body = await gate.post("/v1/subjects/user10/transition", {"action": "drop_addon", "reason": "support"})
        assert (status, body["to"]) == (200, "without_addon")
        (answer,) = await play(gate, [late])
        assert (answer["outcome"], answer["subject"]) == ("stale", "user10")
        opened = life.add("charge.dispute.created", dispute("dp_10", "needs_response", charge="ch_in_A10_1",
                                                            payment_intent=None), _after_the_admin())
        (answer,) = await play(gate, [opened])
        assert (answer["outcome"], answer["subject"], answer["status"]) == ("applied", "user10", "disputed")

    async def test_a_checkout_that_arrived_stale_links_its_customer_and_subscription(self, start):
        """The subject's first Stripe event comes after an admin's change made before it was created: the
        invoices that name only the customer and subscription find the subject by them."""
        gate = await start()
        life = paid_customer(11)
        checkout = life.events[0]
        assert checkout["type"] == "checkout.session.completed"
        status, _ = await gate.post("/v1/subjects/user11/transition", {"to": "paid", "reason": "support"})
        assert status == 200
        (answer,) = await play(gate, [checkout])
        assert (answer["outcome"], answer["subject"]) == ("stale", "user11")
        paid = invoice("in_A11_2", "paid", subscription=life.sub_id("A"), customer=life.customer,
                       period=(life.start + 30 * DAY, life.start + 60 * DAY))
        (answer,) = await play(gate, [se.event("invoice.payment_failed", dict(paid, status="open"), _after_the_admin(),
                                               "evt_11_failed")])
        assert (answer["outcome"], answer["subject"]) == ("applied", "user11")
        body = await view(gate, "user11")
        assert (body["status"], body["stripe_customer"]) == ("grace", life.customer)


def _after_the_admin() -> float:
    """A time after an admin's change made just now: Stripe's `created` is in whole seconds."""
    return time.time() + 1
