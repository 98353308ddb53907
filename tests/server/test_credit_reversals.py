"""Credit packs whose payment comes back, through a running gate on both stores: a refund (refund.created,
refund.updated, charge.refunded as Stripe sends them) or a lost dispute takes back the share of the pack's
credits that came back, once however often and in whatever order Stripe delivers it; spent credits stay spent.
And a pack sold beside a subscription in one Checkout (`mode: subscription`) grants as a one-time Checkout does.
Line items and invoice payments come from a fake Stripe API, as a live gate asks for them."""
from __future__ import annotations

import pytest

from plangate.server.http.api import GATE

from . import stripe_events as se
from .stripe_meters import KEY
from .test_entitlements import AI, NOW, consume, database, deliver, pack_checkout, subscription, view  # noqa: F401

PACK = "price_tokens_1m"


@pytest.fixture
def start(start_gate, database, fake_stripe):
    async def run(**env):
        return await start_gate(plan=AI, database=database, STRIPE_WEBHOOK_SECRET=se.SECRET,
                                STRIPE_SECRET_KEY=KEY, STRIPE_API_BASE=fake_stripe.url, **env)
    return run


def bought(fake, subject: str, session: str, payment_intent: str, quantity: int, paid: int,
           customer: str = "cus_1") -> dict:
    """A paid one-time Checkout of packs as its webhook carries it (no line items: the fake Stripe has them)."""
    fake.line_items[session] = [{"price": PACK, "quantity": quantity}]
    obj = pack_checkout(subject, session, customer=customer)
    obj.update(payment_intent=payment_intent, amount_total=paid, amount_subtotal=paid, currency="usd")
    return obj


def charge_refunded(charge: str, payment_intent: str, amount: int, refunded: int, customer: str = "cus_1") -> dict:
    return {"id": charge, "object": "charge", "amount": amount, "amount_captured": amount,
            "amount_refunded": refunded, "refunded": refunded == amount, "captured": True, "paid": True,
            "status": "succeeded", "currency": "usd", "customer": customer, "payment_intent": payment_intent,
            "disputed": False}


def refund(ident: str, charge: str, payment_intent: str, amount: int, status: str = "succeeded") -> dict:
    return {"id": ident, "object": "refund", "amount": amount, "charge": charge, "payment_intent": payment_intent,
            "currency": "usd", "status": status, "reason": "requested_by_customer"}


def dispute(ident: str, charge: str, payment_intent: str, amount: int, status: str) -> dict:
    return {"id": ident, "object": "dispute", "amount": amount, "charge": charge, "payment_intent": payment_intent,
            "currency": "usd", "status": status, "reason": "fraudulent", "is_charge_refundable": False}


async def credits(gate, subject: str) -> tuple[int, list[dict]]:
    (meter,) = (await view(gate, subject))["credits"]
    return meter["balance"], meter["grants"]


class TestRefunds:
    async def test_a_full_refund_takes_what_is_left_once_and_spent_credits_stay_spent(self, start, fake_stripe):
        gate = await start()
        await deliver(gate, se.event("checkout.session.completed",
                                     bought(fake_stripe, "r1", "cs_r1", "pi_r1", 2, 2000), NOW - 60))
        await consume(gate, "r1", "tokens", 50_000 + 300_000)            # the allowance, then 300k of the credits
        assert (await credits(gate, "r1"))[0] == 1_700_000
        # Stripe sends both for one refund: together they take back once.
        created = se.event("refund.created", refund("re_r1", "ch_r1", "pi_r1", 2000), NOW - 30)
        charged = se.event("charge.refunded", charge_refunded("ch_r1", "pi_r1", 2000, 2000), NOW - 30)
        await deliver(gate, created)
        await deliver(gate, charged)
        assert (await deliver(gate, created))["duplicate"] is True      # a redelivery
        await deliver(gate, se.event("refund.updated", refund("re_r1", "ch_r1", "pi_r1", 2000), NOW - 20))
        balance, (grant,) = await credits(gate, "r1")
        assert (balance, grant["remaining"], grant["amount"]) == (0, 0, 2_000_000)
        taken = {r["id"]: (r["kind"], r["units"], r["taken"]) for r in grant["reversals"]}
        assert taken == {"re_r1": ("refund", 2_000_000, 1_700_000),
                         charged["id"]: ("charge_refunded", 0, 0)}
        assert all(r["payment_intent"] == "pi_r1" and r["created"].endswith("Z") for r in grant["reversals"])
        again = await consume(gate, "r1", "tokens", 10)
        assert (again["allowed"], again["credits"]) == (False, 0)

    async def test_partial_refunds_take_their_share_rounded_against_the_customer(self, start, fake_stripe):
        """2M credits for 30.00: a refund of 0.01 is 666.67 credits, so 667; each later refund takes what the
        share grew by, whichever event tells it (a charge's amount_refunded counts all its refunds)."""
        gate = await start()
        await deliver(gate, se.event("checkout.session.completed",
                                     bought(fake_stripe, "r2", "cs_r2", "pi_r2", 2, 3000), NOW - 60))
        await deliver(gate, se.event("refund.created", refund("re_r2a", "ch_r2", "pi_r2", 1), NOW - 50))
        assert (await credits(gate, "r2"))[0] == 2_000_000 - 667
        await deliver(gate, se.event("charge.refunded", charge_refunded("ch_r2", "pi_r2", 3000, 1), NOW - 50))
        assert (await credits(gate, "r2"))[0] == 2_000_000 - 667
        # A second refund told first by the charge (amount_refunded 1 + 1499), then by its own event.
        await deliver(gate, se.event("charge.refunded", charge_refunded("ch_r2", "pi_r2", 3000, 1500), NOW - 40))
        await deliver(gate, se.event("refund.created", refund("re_r2b", "ch_r2", "pi_r2", 1499), NOW - 40))
        assert (await credits(gate, "r2"))[0] == 1_000_000
        # A refund that failed takes nothing.
        await deliver(gate, se.event("refund.created", refund("re_r2c", "ch_r2", "pi_r2", 500, "failed"), NOW - 30))
        assert (await credits(gate, "r2"))[0] == 1_000_000

    @pytest.mark.parametrize("status", [[], {}, ["succeeded"]])
    async def test_a_refund_whose_status_is_no_text_takes_nothing_and_is_no_500(self, start, fake_stripe, status):
        gate = await start()
        await deliver(gate, se.event("checkout.session.completed",
                                     bought(fake_stripe, "r9", "cs_r9", "pi_r9", 2, 2000), NOW - 60))
        odd = refund("re_r9", "ch_r9", "pi_r9", 2000, status)
        for kind in ("refund.created", "refund.updated"):         # each was a 500, delivered again for days
            await deliver(gate, se.event(kind, odd, NOW - 30))
        assert (await credits(gate, "r9"))[0] == 2_000_000

    async def test_a_pending_refund_that_fails_gives_back_what_it_took(self, start, fake_stripe):
        """A refund is pending (bank transfers, some cards) and fails days later: Stripe sends refund.failed and
        refund.updated (status failed). The money never came back, so the credits it took come back to the grant;
        those spent meanwhile stay spent, and the charge.refunded said while it was pending no longer counts it."""
        gate = await start()
        await deliver(gate, se.event("checkout.session.completed",
                                     bought(fake_stripe, "f1", "cs_f1", "pi_f1", 2, 2000), NOW - 90))
        await consume(gate, "f1", "tokens", 50_000 + 300_000)            # the allowance, then 300k of the credits
        pending = refund("re_f1", "ch_f1", "pi_f1", 1000, "pending")
        await deliver(gate, se.event("refund.created", pending, NOW - 60))
        await deliver(gate, se.event("charge.refunded", charge_refunded("ch_f1", "pi_f1", 2000, 1000), NOW - 60))
        assert (await credits(gate, "f1"))[0] == 700_000                  # half the pack owed: 1M taken
        await consume(gate, "f1", "tokens", 200_000)
        assert (await credits(gate, "f1"))[0] == 500_000
        failed = se.event("refund.failed", {**pending, "status": "failed", "failure_reason": "expired_or_canceled_card"},
                          NOW - 30)
        assert (await deliver(gate, failed))["duplicate"] is False
        assert (await credits(gate, "f1"))[0] == 1_500_000                # the 1M given back; the 500k spent stay so
        assert (await deliver(gate, failed))["duplicate"] is True        # a redelivery
        await deliver(gate, se.event("refund.updated", {**pending, "status": "failed"}, NOW - 30))
        balance, (grant,) = await credits(gate, "f1")
        assert (balance, grant["remaining"]) == (1_500_000, 1_500_000)
        taken = {r["id"]: (r["kind"], r["units"], r["taken"]) for r in grant["reversals"]}
        assert taken["re_f1"] == ("refund", 1_000_000, 1_000_000)
        assert taken["re_f1/undone"] == ("refund_undone", -1_000_000, -1_000_000)
        # A later refund of a quarter takes its share from what was given back.
        await deliver(gate, se.event("refund.created", refund("re_f2", "ch_f1", "pi_f1", 500), NOW - 10))
        await deliver(gate, se.event("charge.refunded", charge_refunded("ch_f1", "pi_f1", 2000, 500), NOW - 10))
        assert (await credits(gate, "f1"))[0] == 1_000_000

    async def test_a_refund_that_failed_at_once_gives_nothing_back(self, start, fake_stripe):
        """Created failed (never on its way), its failure must not undo another refund of the same charge."""
        gate = await start()
        await deliver(gate, se.event("checkout.session.completed",
                                     bought(fake_stripe, "f2", "cs_f2", "pi_f2", 2, 2000), NOW - 90))
        await deliver(gate, se.event("refund.created", refund("re_f2a", "ch_f2", "pi_f2", 1000), NOW - 60))
        await deliver(gate, se.event("charge.refunded", charge_refunded("ch_f2", "pi_f2", 2000, 1000), NOW - 60))
        assert (await credits(gate, "f2"))[0] == 1_000_000
        broken = refund("re_f2b", "ch_f2", "pi_f2", 500, "failed")
        await deliver(gate, se.event("refund.created", broken, NOW - 30))
        await deliver(gate, se.event("refund.failed", broken, NOW - 30))
        assert (await credits(gate, "f2"))[0] == 1_000_000

    async def test_a_refund_of_another_payment_takes_nothing(self, start, fake_stripe):
        gate = await start()
        await deliver(gate, se.event("checkout.session.completed",
                                     bought(fake_stripe, "r3", "cs_r3", "pi_r3", 1, 1000), NOW - 60))
        await deliver(gate, se.event("charge.refunded", charge_refunded("ch_other", "pi_other", 1000, 1000),
                                     NOW - 30))
        assert (await credits(gate, "r3"))[0] == 1_000_000


class TestOrder:
    async def test_a_refund_before_the_purchase_takes_from_the_grant_as_it_is_made(self, start, fake_stripe):
        """The customer is the subject's already (a subscription): the refund is folded in first, with nothing
        to take from; the Checkout's event, later, makes the grant already reduced."""
        gate = await start()
        await deliver(gate, se.event("customer.subscription.created",
                                     subscription("o1", "account", "price_starter_monthly", customer="cus_o1"),
                                     NOW - 90))
        await deliver(gate, se.event("charge.refunded",
                                     charge_refunded("ch_o1", "pi_o1", 1000, 500, customer="cus_o1"), NOW - 50))
        await deliver(gate, se.event("checkout.session.completed",
                                     bought(fake_stripe, "o1", "cs_o1", "pi_o1", 1, 1000, customer="cus_o1"),
                                     NOW - 60))
        balance, grants = await credits(gate, "o1")
        (pack,) = [g for g in grants if g["source"] == "purchase"]
        assert (pack["remaining"], [r["units"] for r in pack["reversals"]]) == (500_000, [500_000])
        assert balance == 500_000 + 200_000         # and the tier's grant of the period, untouched

    async def test_a_refund_waiting_for_its_subject_is_adopted_with_the_purchase(self, start, fake_stripe):
        """A refund names only its charge and payment intent: Stripe says whose customer, which no subject holds
        yet; it waits, and the Checkout's event (which links the payment intent) adopts it."""
        fake_stripe.payments["ch_o2"] = charge_refunded("ch_o2", "pi_o2", 1000, 1000, customer="cus_o2")
        gate = await start()
        early = await deliver(gate, se.event("refund.created", refund("re_o2", "ch_o2", "pi_o2", 1000), NOW - 50))
        assert early["outcome"] == "pending"
        await deliver(gate, se.event("checkout.session.completed",
                                     bought(fake_stripe, "o2", "cs_o2", "pi_o2", 1, 1000, customer="cus_o2"),
                                     NOW - 60))
        balance, (grant,) = await credits(gate, "o2")
        assert (balance, grant["remaining"], grant["reversals"][0]["id"]) == (0, 0, "re_o2")


class TestDisputes:
    @pytest.mark.parametrize("status, left", [("lost", 0), ("won", 1_000_000), ("warning_closed", 1_000_000)])
    async def test_a_lost_dispute_takes_the_credits_a_won_one_nothing(self, start, fake_stripe, status, left):
        gate = await start()
        await deliver(gate, se.event("checkout.session.completed",
                                     bought(fake_stripe, "d1", "cs_d1", "pi_d1", 1, 1000), NOW - 60))
        await deliver(gate, se.event("charge.dispute.created",
                                     dispute("dp_d1", "ch_d1", "pi_d1", 1000, "needs_response"), NOW - 50))
        assert (await credits(gate, "d1"))[0] == 1_000_000
        closed = se.event("charge.dispute.closed", dispute("dp_d1", "ch_d1", "pi_d1", 1000, status), NOW - 40)
        await deliver(gate, closed)
        assert (await deliver(gate, closed))["duplicate"] is True
        balance, (grant,) = await credits(gate, "d1")
        assert balance == left
        assert [(r["kind"], r["units"]) for r in grant["reversals"]] == \
            ([("dispute_lost", 1_000_000)] if status == "lost" else [])


class TestBesideASubscription:
    async def test_a_pack_in_a_subscriptions_checkout_grants_and_a_refund_takes_it_back(self, start, fake_stripe):
        fake_stripe.line_items["cs_s1"] = [{"price": "price_starter_monthly", "quantity": 1, "recurring": True},
                                           {"price": PACK, "quantity": 1}]
        fake_stripe.invoice_payments["in_s1"] = [
            {"id": "inpay_s1", "object": "invoice_payment", "invoice": "in_s1", "status": "paid",
             "amount_paid": 3000, "currency": "usd", "is_default": True,
             "payment": {"type": "payment_intent", "payment_intent": "pi_s1"}}]
        gate = await start()
        obj = {"id": "cs_s1", "object": "checkout.session", "mode": "subscription", "payment_status": "paid",
               "status": "complete", "client_reference_id": "s1", "customer": "cus_s1", "subscription": "sub_s1",
               "invoice": "in_s1", "payment_intent": None, "amount_total": 3000, "currency": "usd",
               "metadata": {}}
        answer = await deliver(gate, se.event("checkout.session.completed", obj, NOW - 60))
        assert answer["status"] == "subscribed"             # the subscription's own handling, as before
        balance, grants = await credits(gate, "s1")
        (pack,) = [g for g in grants if g["source"] == "purchase"]
        assert (pack["id"], pack["amount"], pack["note"]) == ("cs_s1:1", 1_000_000, f"1 x {PACK}")
        # The refund of the first invoice's payment names only it: found by the payment intent the Checkout kept.
        await deliver(gate, se.event("refund.created", refund("re_s1", "ch_s1", "pi_s1", 3000), NOW - 30))
        balance, grants = await credits(gate, "s1")
        (pack,) = [g for g in grants if g["source"] == "purchase"]
        assert pack["remaining"] == 0 and (await view(gate, "s1"))["status"] == "subscribed"

    async def test_a_subscriptions_checkout_without_a_pack_asks_nothing_more(self, start, fake_stripe):
        fake_stripe.line_items["cs_s2"] = [{"price": "price_starter_monthly", "quantity": 1, "recurring": True}]
        gate = await start()
        obj = {"id": "cs_s2", "object": "checkout.session", "mode": "subscription", "payment_status": "paid",
               "status": "complete", "client_reference_id": "s2", "customer": "cus_s2", "subscription": "sub_s2",
               "invoice": "in_s2", "payment_intent": None, "amount_total": 2000, "metadata": {}}
        assert (await deliver(gate, se.event("checkout.session.completed", obj, NOW - 60)))["status"] == "subscribed"
        assert [g for g in (await credits(gate, "s2"))[1] if g["source"] == "purchase"] == []


class TestErasure:
    async def test_reversals_move_to_the_pseudonym_with_their_stripe_ids_replaced(self, start, fake_stripe):
        gate = await start()
        await deliver(gate, se.event("checkout.session.completed",
                                     bought(fake_stripe, "e1", "cs_e1", "pi_e1", 1, 1000), NOW - 60))
        await deliver(gate, se.event("refund.created", refund("re_e1", "ch_e1", "pi_e1", 250), NOW - 50))
        status, erased = await gate.post("/v1/subjects/e1/erase", {"actor": "privacy"})
        assert status == 200, erased
        store = gate.app[GATE].store
        assert await store.recent_reversals("e1") == []
        (taken,) = await store.recent_reversals(erased["pseudonym"])
        assert (taken.units, taken.taken, taken.amount) == (250_000, 250_000, 250)
        kept = (taken.id, taken.grant_id.rpartition(":")[0], taken.payment_intent, taken.charge)
        assert [v.split("erased")[0] for v in kept] == ["re_", "cs_", "pi_", "ch_"], kept
        (grant,) = await store.recent_grants(erased["pseudonym"])
        assert grant.id == taken.grant_id and grant.payment_intent == taken.payment_intent
        assert grant.remaining == 750_000

    async def test_an_undone_refund_keeps_naming_its_refund_under_the_pseudonym(self, start, fake_stripe):
        gate = await start()
        await deliver(gate, se.event("checkout.session.completed",
                                     bought(fake_stripe, "e2", "cs_e2", "pi_e2", 1, 1000), NOW - 60))
        pending = refund("re_e2", "ch_e2", "pi_e2", 250, "pending")
        await deliver(gate, se.event("refund.created", pending, NOW - 50))
        await deliver(gate, se.event("refund.failed", {**pending, "status": "failed"}, NOW - 40))
        status, erased = await gate.post("/v1/subjects/e2/erase", {"actor": "privacy"})
        assert status == 200, erased
        taken = {r.kind: r for r in await gate.app[GATE].store.recent_reversals(erased["pseudonym"])}
        assert taken["refund"].id.startswith("re_erased") and "re_e2" not in taken["refund"].id
        assert taken["refund_undone"].id == taken["refund"].id + "/undone"
        (grant,) = await gate.app[GATE].store.recent_grants(erased["pseudonym"])
        assert grant.remaining == 1_000_000


class TestWhose:
    async def moved(self, gate, fake) -> None:
        """m1 bought a pack as customer cus_m, then subscribed as another customer (cus_m2); m2 subscribed as
        cus_m, which is now held by m2 alone."""
        await deliver(gate, se.event("checkout.session.completed",
                                     bought(fake, "m1", "cs_m1", "pi_m1", 1, 1000, customer="cus_m"), NOW - 90))
        await deliver(gate, se.event("customer.subscription.created",
                                     subscription("m1", "account", "price_starter_monthly", sub_id="sub_m1",
                                                  customer="cus_m2"), NOW - 80))
        await deliver(gate, se.event("customer.subscription.created",
                                     subscription("m2", "account", "price_starter_monthly", sub_id="sub_m2",
                                                  customer="cus_m"), NOW - 70))

    @pytest.mark.parametrize("events", [("refund.created", "charge.refunded"), ("charge.refunded",)])
    async def test_a_refund_of_a_pack_lands_on_its_buyer_not_on_who_holds_its_customer_now(
            self, start, fake_stripe, events):
        """The charge names the customer, which another subject holds now; its payment intent is the buyer's.
        The refund takes the buyer's pack (whichever of Stripe's events about it comes), nothing of the other."""
        gate = await start()
        await self.moved(gate, fake_stripe)
        before = await credits(gate, "m2")
        sent = {"refund.created": refund("re_m1", "ch_m1", "pi_m1", 1000),
                "charge.refunded": charge_refunded("ch_m1", "pi_m1", 1000, 1000, customer="cus_m")}
        answers = [await deliver(gate, se.event(kind, sent[kind], NOW - 30)) for kind in events]
        assert [a["subject"] for a in answers] == ["m1"] * len(events)
        (pack,) = [g for g in (await credits(gate, "m1"))[1] if g["source"] == "purchase"]
        assert (pack["remaining"], pack["amount"]) == (0, 1_000_000)
        assert await credits(gate, "m2") == before
        customers = [(await view(gate, s))["stripe_customer"] for s in ("m1", "m2")]
        assert customers == ["cus_m2", "cus_m"], customers


class TestFreePack:
    async def test_a_pack_checkout_a_coupon_made_free_grants_its_credits(self, start, fake_stripe):
        """A 100% coupon: Checkout completes with `payment_status: no_payment_required`, nothing to pay and no
        payment intent; the customer got the pack all the same."""
        fake_stripe.line_items["cs_z1"] = [{"price": PACK, "quantity": 1}]
        gate = await start()
        obj = pack_checkout("z1", "cs_z1")
        obj.update(payment_status="no_payment_required", payment_intent=None, amount_total=0, amount_subtotal=1000,
                   currency="usd", total_details={"amount_discount": 1000, "amount_shipping": 0, "amount_tax": 0})
        await deliver(gate, se.event("checkout.session.completed", obj, NOW - 60))
        balance, (grant,) = await credits(gate, "z1")
        assert (balance, grant["amount"], grant["note"]) == (1_000_000, 1_000_000, f"1 x {PACK}")


class TestSeveralPacks:
    async def test_a_partial_refund_of_a_checkout_of_several_packs_takes_its_share_of_the_whole(
            self, start_gate, database, fake_stripe, tmp_path):
        """One Checkout sold 1M tokens for 10.00 and 5M for 40.00. A refund names its payment intent and charge,
        never a line: 10.00 back of 50.00 is a fifth of what the payment bought, a fifth of each pack (1.2M in all,
        what 10.00 bought at the Checkout's price), not all of one pack and a share of the other."""
        plan = tmp_path / "plans.yaml"
        plan.write_text(AI.read_text(encoding="utf-8").replace(
            "      price_tokens_1m: 1000000\n", "      price_tokens_1m: 1000000\n      price_tokens_5m: 5000000\n"),
            encoding="utf-8")
        gate = await start_gate(plan=plan, database=database, STRIPE_WEBHOOK_SECRET=se.SECRET,
                                STRIPE_SECRET_KEY=KEY, STRIPE_API_BASE=fake_stripe.url)
        obj = bought(fake_stripe, "p1", "cs_p1", "pi_p1", 1, 5000)
        fake_stripe.line_items["cs_p1"].append({"price": "price_tokens_5m", "quantity": 1})
        await deliver(gate, se.event("checkout.session.completed", obj, NOW - 60))
        assert (await credits(gate, "p1"))[0] == 6_000_000
        await deliver(gate, se.event("refund.created", refund("re_p1", "ch_p1", "pi_p1", 1000), NOW - 50))
        await deliver(gate, se.event("charge.refunded", charge_refunded("ch_p1", "pi_p1", 5000, 1000), NOW - 50))
        balance, grants = await credits(gate, "p1")
        assert balance == 6_000_000 - 1_200_000
        assert sorted((g["amount"], g["remaining"]) for g in grants) == [(1_000_000, 800_000), (5_000_000, 4_000_000)]
        await deliver(gate, se.event("refund.created", refund("re_p2", "ch_p1", "pi_p1", 4000), NOW - 40))
        assert (await credits(gate, "p1"))[0] == 0
