"""End to end against localstripe: real subscriptions, real signed webhooks, real reconciliation.

localstripe makes the Stripe objects and signs and delivers its own events to a real gate; the gate's
reconciliation job reads subscriptions back from localstripe's API. Where localstripe emits no event for
something Stripe does (see STRIPE.md and the notes below), the flow is completed with one event signed by
the stripe package's own helper, carrying the object as localstripe holds it. Deliveries are asynchronous
(localstripe sends each event a second after making it, in no guaranteed order), so tests poll the gate with
a bounded wait. Every assertion reads the gate: GET /v1/subjects/{subject}, /v1/check, or its SQLite file.
"""
from __future__ import annotations

import time

import aiohttp
import pytest
import stripe

from tests.server import stripe_events as se
from tests.server.conftest import BASE_ENV, ServedGate, GateProcess

from .conftest import KEY, WEBHOOK_SECRET, eventually, q, relevant

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


async def view(gate, subject: str) -> dict:
    status, body = await gate.get(f"/v1/subjects/{subject}")
    assert status == 200, body
    return body


async def reaches(gate, subject: str, status: str) -> dict:
    return await eventually(lambda: view(gate, subject), lambda v: v["status"] == status,
                            f"{subject} to reach {status}")


async def all_delivered(gate, ls) -> dict[str, tuple[str, str]]:
    """Wait until every event localstripe made, of a type the gate records, is a row of the gate's
    subscription_events and none of them still waits for its subject (one that arrived with the event linking
    it is recorded `pending` for a moment before it is folded in); {event id: (type, outcome)} of those rows."""
    kinds = relevant(gate)

    async def rows():
        made = {e["id"] for e in await ls.events() if e["type"] in kinds}
        have = {r[0]: (r[1], r[2]) for r in q(gate.database, "SELECT event_id, type, outcome FROM subscription_events")}
        return made, have

    made, have = await eventually(rows, lambda r: r[0] <= set(r[1]) and all(r[1][i][1] != "pending" for i in r[0]),
                                  "localstripe's events to reach the gate and find their subject")
    return {i: have[i] for i in made}


async def deliver(gate, evt: dict) -> dict:
    """One event signed with the secret localstripe signs with, as Stripe would sign it."""
    body = se.encode(evt)
    status, answer = await gate.call("POST", "/webhook/stripe", raw=body, token=None,
                                     headers={"Stripe-Signature": se.sign(body, WEBHOOK_SECRET)})
    assert status == 200, answer
    return answer


async def reconcile(gate) -> int:
    status, answer = await gate.post("/v1/jobs/reconcile")
    assert status == 200, answer
    return answer["result"]


def payments(gate, subject: str) -> list[tuple]:
    return q(gate.database, "SELECT invoice_id, status, amount, currency, stripe_subscription FROM payments "
                            "WHERE subject = ? ORDER BY created, invoice_id", subject)


def moves(gate, subject: str) -> list[tuple[str, str]]:
    return q(gate.database, "SELECT from_status, to_status FROM transitions WHERE subject = ? ORDER BY id", subject)


async def paid_subscriber(gate, ls, subject: str) -> tuple[dict, dict]:
    """A customer with a Visa card subscribed at localstripe, and the gate told so by localstripe's events."""
    cus = await ls.customer(subject)
    sub = await ls.subscribe(cus["id"], subject)
    assert sub["status"] == "active"
    await reaches(gate, subject, "paid")
    await all_delivered(gate, ls)
    return cus, sub


@pytest.fixture
async def ls(localstripe_server):
    await localstripe_server.plan()
    return localstripe_server


class TestWebhooksFromLocalstripe:
    async def test_a_card_subscription_goes_paid(self, stripe_gate, ls):
        gate = await stripe_gate()
        cus = await ls.customer("alice")
        sub = await ls.subscribe(cus["id"], "alice")
        assert sub["status"] == "active"

        seen = await reaches(gate, "alice", "paid")
        assert (seen["tier"], seen["stripe_customer"], seen["stripe_subscription"]) == ("pro", cus["id"], sub["id"])
        assert q(gate.database, "SELECT period_start, period_end FROM subscriptions WHERE subject = 'alice'") == \
            [(float(sub["current_period_start"]), float(sub["current_period_end"]))]   # old shape: on the sub
        events = await all_delivered(gate, ls)
        assert sorted(events.values()) == [("customer.subscription.created", "applied"),
                                           ("invoice.payment_succeeded", "noop")]
        assert payments(gate, "alice") == [(sub["latest_invoice"], "paid", 2000, "eur", sub["id"])]
        assert moves(gate, "alice") == [("limited_free_trial", "paid")]
        cause = q(gate.database, "SELECT trigger, cause_id FROM transitions WHERE subject = 'alice'")[0]
        assert events[cause[1]] == ("customer.subscription.created", "applied") and "subscription.created" in cause[0]
        _, decision = await gate.check("alice")
        assert decision["allowed"] is True and decision["limit"] == 5000

    async def test_a_card_declined_at_signup_grants_nothing(self, stripe_gate, ls):
        gate = await stripe_gate()
        # pm_card_visa_chargeDeclined is refused when it is attached: no subscription can be made with it.
        with pytest.raises(stripe.CardError):
            await ls.customer("bob", payment_method="pm_card_visa_chargeDeclined")
        # pm_card_chargeCustomerFail attaches; the first charge fails and the subscription stays incomplete.
        cus = await ls.customer("bob", payment_method="pm_card_chargeCustomerFail")
        sub = await ls.subscribe(cus["id"], "bob")
        assert sub["status"] == "incomplete"
        events = await all_delivered(gate, ls)
        assert sorted(events.values()) == [("customer.subscription.created", "noop")]
        seen = await view(gate, "bob")
        assert (seen["status"], seen["stripe_subscription"]) == ("limited_free_trial", sub["id"])
        assert moves(gate, "bob") == [] and payments(gate, "bob") == []
        # localstripe pays a subscription's first invoice with a no-op failure callback: no invoice.payment_failed.
        assert "invoice.payment_failed" not in {e["type"] for e in await ls.events()}

    async def test_a_declined_renewal_leads_into_grace(self, stripe_gate, ls):
        gate = await stripe_gate()
        cus, sub = await paid_subscriber(gate, ls, "erin")
        await ls.client.v1.customers.update_async(
            cus["id"], params={"invoice_settings": {"default_payment_method": "pm_card_chargeCustomerFail"}})
        renewal = await ls.client.v1.invoices.create_async(params={"customer": cus["id"], "subscription": sub["id"]})
        renewal = await ls.client.v1.invoices.pay_async(renewal.id)
        intent = await ls.client.v1.payment_intents.retrieve_async(renewal.payment_intent)
        assert (renewal.status, intent.status) == ("open", "requires_payment_method")
        assert intent.last_payment_error["code"] == "card_declined"
        # localstripe records the declined charge but emits no invoice.payment_failed for an invoice paid through
        # POST /v1/invoices/{id}/pay, and leaves the subscription active. Stripe would send the event: here it is
        # signed by us, carrying the invoice as localstripe holds it.
        assert "invoice.payment_failed" not in {e["type"] for e in await ls.events()}
        assert (await view(gate, "erin"))["status"] == "paid"
        held = (await ls.client.v1.invoices.retrieve_async(renewal.id)).to_dict()
        answer = await deliver(gate, se.event("invoice.payment_failed", held, time.time()))
        assert (answer["outcome"], answer["status"]) == ("applied", "grace_period")

        seen = await view(gate, "erin")
        assert seen["status"] == "grace_period" and seen["timer_due"] is not None
        assert payments(gate, "erin")[-1] == (renewal.id, "failed", 2000, "eur", sub["id"])
        assert moves(gate, "erin") == [("limited_free_trial", "paid"), ("paid", "grace_period")]
        _, decision = await gate.check("erin")
        assert decision["allowed"] is True          # grace keeps the tier's quota

    async def test_failed_authentication_on_renewal_goes_to_grace_and_reconciliation_brings_it_back(
            self, stripe_gate, ls):
        gate = await stripe_gate()
        cus, sub = await paid_subscriber(gate, ls, "dora")
        # A card that asks for 3-D Secure, which the customer then fails: localstripe's own path to
        # invoice.payment_failed on a renewal, and to a past_due subscription.
        card = await ls.client.v1.payment_methods.create_async(params={
            "type": "card", "card": {"number": "4000002500003155", "exp_month": 12, "exp_year": 2030, "cvc": "123"}})
        await ls.client.v1.payment_methods.attach_async(card.id, params={"customer": cus["id"]})
        await ls.client.v1.customers.update_async(cus["id"],
                                                  params={"invoice_settings": {"default_payment_method": card.id}})
        renewal = await ls.client.v1.invoices.create_async(params={"customer": cus["id"], "subscription": sub["id"]})
        renewal = await ls.client.v1.invoices.pay_async(renewal.id)
        intent = await ls.client.v1.payment_intents.retrieve_async(renewal.payment_intent)
        assert intent.status == "requires_action"
        status, _ = await ls.raw("POST", f"/v1/payment_intents/{intent.id}/_authenticate",
                                 {"client_secret": intent.client_secret, "success": False})
        assert status == 200

        await reaches(gate, "dora", "grace_period")
        events = await all_delivered(gate, ls)
        assert ("invoice.payment_failed", "applied") in events.values()
        assert payments(gate, "dora")[-1] == (renewal.id, "failed", 2000, "eur", sub["id"])
        assert (await ls.client.v1.subscriptions.retrieve_async(sub["id"])).status == "past_due"

        # Stripe says past_due: reconciliation confirms grace and moves nothing.
        assert await reconcile(gate) == 0
        assert (await view(gate, "dora"))["status"] == "grace_period"

        # The customer pays with a working card. localstripe sends invoice.payment_succeeded (the plan moves on
        # invoice.paid, which localstripe never sends) and no customer.subscription.updated: the gate records
        # the payment and stays in grace until reconciliation reads the subscription back, active.
        await ls.client.v1.customers.update_async(
            cus["id"], params={"invoice_settings": {"default_payment_method": "pm_card_visa"}})
        assert (await ls.client.v1.invoices.pay_async(renewal.id)).status == "paid"
        await eventually(lambda: _payment_status(gate, renewal.id), lambda s: s == "paid", "the renewal paid")
        await all_delivered(gate, ls)
        assert (await view(gate, "dora"))["status"] == "grace_period"
        assert await reconcile(gate) == 1
        seen = await view(gate, "dora")
        assert (seen["status"], seen["tier"], seen["timer_due"]) == ("paid", "pro", None)
        assert moves(gate, "dora") == [("limited_free_trial", "paid"), ("paid", "grace_period"),
                                       ("grace_period", "paid")]
        assert q(gate.database, "SELECT type, outcome FROM subscription_events WHERE event_id LIKE 'reconcile_%' "
                                "ORDER BY created DESC LIMIT 1") == [("customer.subscription.updated", "applied")]

    async def test_a_failing_sepa_debit_ends_the_subscription(self, stripe_gate, ls):
        gate = await stripe_gate()
        mandate = await ls.client.v1.payment_methods.create_async(
            params={"type": "sepa_debit", "sepa_debit": {"iban": "DE62370400440532013001"}})
        cus = await ls.customer("sepp", payment_method=mandate.id)
        sub = await ls.subscribe(cus["id"], "sepp")
        assert sub["status"] == "active"         # a SEPA debit is pending at first; it fails half a second later

        await reaches(gate, "sepp", "canceled")
        events = await all_delivered(gate, ls)
        kinds = {kind: outcome for kind, outcome in events.values()}
        assert kinds["customer.subscription.created"] == "applied"
        assert kinds["customer.subscription.deleted"] == "applied"
        # Delivered in order it moved paid -> grace; delivered after the deletion it changed nothing.
        assert kinds["invoice.payment_failed"] in ("applied", "stale")
        assert payments(gate, "sepp") == [(sub["latest_invoice"], "failed", 2000, "eur", sub["id"])]
        assert moves(gate, "sepp")[-1][1] == "canceled"
        assert (await ls.client.v1.subscriptions.retrieve_async(sub["id"])).status == "canceled"
        _, decision = await gate.check("sepp")
        assert decision["allowed"] is False

    async def test_cancellation_ends_it(self, stripe_gate, ls):
        gate = await stripe_gate()
        _, sub = await paid_subscriber(gate, ls, "carl")
        ended = await ls.client.v1.subscriptions.cancel_async(sub["id"])
        assert ended.status == "canceled"

        await reaches(gate, "carl", "canceled")
        events = await all_delivered(gate, ls)
        assert ("customer.subscription.deleted", "applied") in events.values()
        assert moves(gate, "carl") == [("limited_free_trial", "paid"), ("paid", "canceled")]
        _, decision = await gate.check("carl")
        assert decision["allowed"] is False


class TestReconciliationAgainstLocalstripe:
    """The gate missed localstripe's webhooks (none is registered): reconciliation reads the truth back."""

    async def test_a_billing_problem_becomes_paid_when_stripe_says_active(self, stripe_gate, ls):
        gate = await stripe_gate(hooked=False)
        cus = await ls.customer("carol")
        sub = await ls.subscribe(cus["id"], None)      # made by a Checkout: the link is the session, not metadata
        now = time.time()
        # What localstripe cannot send: the Checkout that links carol to the subscription, then a failed invoice
        # and the subscription past_due with it.
        await deliver(gate, se.event("checkout.session.completed", se.checkout("carol", cus["id"], sub["id"]),
                                     now - 120))
        await deliver(gate, se.event("invoice.payment_failed", se.invoice("open", sub_id=sub["id"], customer=cus["id"],
                                                                          inv_id="in_e2e_failed"), now - 60))
        past_due = se.event("customer.subscription.updated", {**sub, "status": "past_due"}, now - 60)
        past_due["data"]["previous_attributes"] = {"status": "active"}
        await deliver(gate, past_due)
        assert (await view(gate, "carol"))["status"] == "billing_problem"

        assert await reconcile(gate) == 1
        seen = await view(gate, "carol")
        assert (seen["status"], seen["tier"], seen["stripe_subscription"]) == ("paid", "pro", sub["id"])
        assert q(gate.database, "SELECT period_start, period_end FROM subscriptions WHERE subject = 'carol'") == \
            [(float(sub["current_period_start"]), float(sub["current_period_end"]))]
        assert moves(gate, "carol") == [("limited_free_trial", "paid_trial"), ("paid_trial", "billing_problem"),
                                        ("billing_problem", "paid")]
        rows = q(gate.database, "SELECT type, outcome FROM subscription_events WHERE event_id LIKE 'reconcile_%'")
        assert rows == [("customer.subscription.updated", "applied")]
        # Asked again, Stripe says the same: nothing moves, nothing more is recorded.
        assert await reconcile(gate) == 0
        assert len(q(gate.database, "SELECT 1 FROM subscription_events WHERE subject = 'carol'")) == 4

    async def test_a_subscription_ended_at_stripe_cancels_a_doubtful_subject(self, stripe_gate, ls):
        gate = await stripe_gate(hooked=False)
        cus = await ls.customer("frank")
        sub = await ls.subscribe(cus["id"], "frank")
        now = time.time()
        held = (await ls.client.v1.subscriptions.retrieve_async(sub["id"])).to_dict()
        await deliver(gate, se.event("customer.subscription.created", held, now - 120))
        await deliver(gate, se.event("invoice.payment_failed", se.invoice("open", sub_id=sub["id"], customer=cus["id"],
                                                                          inv_id="in_e2e_frank"), now - 60))
        # A second doubtful subject whose subscription localstripe has never heard of.
        await deliver(gate, se.event("checkout.session.completed", se.checkout("gina", "cus_e2e_gone", "sub_e2e_gone"),
                                     now - 120))
        await deliver(gate, se.event("invoice.payment_failed", se.invoice("open", sub_id="sub_e2e_gone",
                                                                          customer="cus_e2e_gone", inv_id="in_e2e_g"),
                                     now - 60))
        assert [(await view(gate, s))["status"] for s in ("frank", "gina")] == ["grace_period", "billing_problem"]
        await ls.client.v1.subscriptions.cancel_async(sub["id"])     # its webhook reaches nobody

        assert await reconcile(gate) == 1
        assert (await view(gate, "frank"))["status"] == "canceled"
        assert moves(gate, "frank")[-1] == ("grace_period", "canceled")
        assert q(gate.database, "SELECT type, outcome FROM subscription_events WHERE subject = 'frank' AND "
                                "event_id LIKE 'reconcile_%'") == [("customer.subscription.deleted", "applied")]
        assert (await view(gate, "gina"))["status"] == "billing_problem"    # a 404 at Stripe is skipped, not fatal
        _, decision = await gate.check("frank")
        assert decision["allowed"] is False


async def _payment_status(gate, invoice_id: str) -> str | None:
    rows = q(gate.database, "SELECT status FROM payments WHERE invoice_id = ?", invoice_id)
    return rows[0][0] if rows else None



class TestServedGate:
    async def test_plangate_serve_configured_by_environment_follows_localstripe(self, ls, tmp_path):
        """The real `plangate serve` process: localstripe's webhooks reach it, its reconciliation reads
        localstripe back, and it stops cleanly (its Stripe client's connections closed)."""
        database = str(tmp_path / "served.sqlite3")
        served = GateProcess({**BASE_ENV, "PLANGATE_DATABASE": database, "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
                              "STRIPE_SECRET_KEY": KEY, "STRIPE_API_BASE": ls.url,
                              "PLANGATE_RECONCILE_SCHEDULE": "0 0 1 1 *", "PYTHONWARNINGS": "always"}, tmp_path)
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
                gate = ServedGate(served.url, session, None, database)
                await ls.hook(gate.url + "/webhook/stripe")
                cus = await ls.customer("hana")
                sub = await ls.subscribe(cus["id"], "hana")
                await reaches(gate, "hana", "paid")
                # Then Stripe's news stops reaching it: a failed renewal (signed by us) and the end of the
                # subscription, which only reconciliation learns about.
                ls.unhook()
                await deliver(gate, se.event("invoice.payment_failed", se.invoice(
                    "open", sub_id=sub["id"], customer=cus["id"], inv_id="in_e2e_served"), time.time()))
                assert (await view(gate, "hana"))["status"] == "grace_period"
                await ls.client.v1.subscriptions.cancel_async(sub["id"])
                assert await reconcile(gate) == 1
                assert (await view(gate, "hana"))["status"] == "canceled"
        finally:
            code, _, err = served.stop()
        assert code == 0, err
        assert "Traceback" not in err and "Unclosed" not in err, err
        assert moves(ServedGate(served.url, None, None, database), "hana") == \
            [("limited_free_trial", "paid"), ("paid", "grace_period"), ("grace_period", "canceled")]
