"""An event that names only a payment (a dispute names its charge and payment intent, not the customer), of a
charge the gate has not seen: the gate asks Stripe's API whose the charge is. Against localstripe (charges), and
against a small aiohttp server on 127.0.0.1 speaking Stripe's shape where localstripe cannot (an API that fails,
payment intents of its own), on both stores.
"""
from __future__ import annotations

import time

import pytest
from aiohttp import web

from tests.server import stripe_events as se
from tests.server.conftest import PLAN
from tests.server.stripe_lifecycles import DAY, HOUR, Life, charge, dispute, invoice
from tests.server.test_webhook_subscriptions import QUIET, outcomes, plan_file, play, view

from .conftest import KEY

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def start(start_gate, tmp_path, each_database):
    """start(api_base) -> a gate on the test plan over a store of each kind, asking Stripe at api_base."""
    database = each_database

    async def run(api_base: str, plan=None, **env):
        return await start_gate(plan=plan or plan_file(tmp_path, False), database=database,
                                **{**QUIET, "STRIPE_SECRET_KEY": KEY, "STRIPE_API_BASE": api_base, **env})
    return run


def subscribed(customer: str, n: int) -> Life:
    """The subscription events that link `customer` to user{n}, 20 days ago (its charges not among them)."""
    life = Life(n, f"user{n}", time.time() - 20 * DAY)
    life.subscribe("A", life.start)
    for e in life.events:
        obj = e["data"]["object"]
        if obj.get("customer") == life.customer:
            obj["customer"] = customer
    life.events = [e for e in life.events if e["type"] not in ("charge.succeeded", "payment_intent.succeeded")]
    return life


class TestAskingLocalstripe:
    async def test_a_dispute_of_a_charge_never_seen_is_linked_by_stripes_record_of_it(self, start,
                                                                                     localstripe_server):
        ls = localstripe_server
        customer = await ls.customer("user1")
        charge = (await ls.client.v1.charges.create_async(params={
            "amount": 2000, "currency": "eur", "customer": customer["id"]})).to_dict()
        gate = await start(ls.url)
        life = subscribed(customer["id"], 1)
        await play(gate, life.events)
        opened = life.add("charge.dispute.created", dispute("dp_1", "needs_response", charge=charge["id"],
                                                            payment_intent=None), life.start + 5 * DAY)
        (answer,) = await play(gate, [opened])
        assert (answer["outcome"], answer["subject"], answer["status"]) == ("applied", "user1", "disputed")
        # The charge is linked now: the dispute's end needs no question to Stripe (localstripe is emptied first).
        await ls.flush()
        closed = life.add("charge.dispute.closed", dispute("dp_1", "lost", charge=charge["id"],
                                                           payment_intent=None), life.start + 9 * DAY)
        (answer,) = await play(gate, [closed])
        assert (answer["subject"], answer["status"]) == ("user1", "canceled")

    async def test_a_charge_stripe_does_not_know_leaves_the_dispute_pending(self, start, localstripe_server):
        gate = await start(localstripe_server.url)
        life = Life(2, "user2", time.time() - DAY)
        opened = life.add("charge.dispute.created", dispute("dp_2", "needs_response", charge="ch_nowhere",
                                                            payment_intent=None), time.time())
        (answer,) = await play(gate, [opened])
        assert (answer["outcome"], answer["subject"]) == ("pending", None)


class FakeStripe:
    """Stripe's API for charges and payment intents, and the invoice payments of a payment intent, on 127.0.0.1:
    answers 500 while `failing`, and counts."""

    def __init__(self):
        self.objects: dict[str, dict] = {}
        self.paid: dict[str, dict] = {}     # payment intent -> the invoice it paid
        self.failing = False
        self.asked: list[str] = []
        self.app = web.Application()
        self.app.router.add_get("/v1/invoice_payments", self.invoice_payments)
        self.app.router.add_get("/v1/{kind}/{ident}", self.retrieve)

    async def invoice_payments(self, request: web.Request) -> web.Response:
        """GET /v1/invoice_payments?payment[type]=payment_intent&payment[payment_intent]=pi_...: the list, with
        each payment's invoice expanded when asked."""
        assert request.headers["Authorization"] == f"Bearer {KEY}"
        assert request.query["payment[type]"] == "payment_intent"
        pi = request.query["payment[payment_intent]"]
        self.asked.append(f"invoice_payments:{pi}")
        if self.failing:
            return web.json_response({"error": {"type": "api_error", "message": "try later"}}, status=500)
        expand = request.query.get("expand[0]") == "data.invoice"
        data = [{"id": f"inpay_{pi}", "object": "invoice_payment", "status": "paid", "is_default": True,
                 "amount_paid": inv["amount_paid"], "amount_requested": inv["amount_due"], "currency": "eur",
                 "invoice": inv if expand else inv["id"], "livemode": False, "created": 0,
                 "payment": {"type": "payment_intent", "payment_intent": pi}}
                for inv in ([self.paid[pi]] if pi in self.paid else [])]
        return web.json_response({"object": "list", "data": data, "has_more": False, "url": "/v1/invoice_payments"})

    async def retrieve(self, request: web.Request) -> web.Response:
        ident = request.match_info["ident"]
        self.asked.append(ident)
        assert request.headers["Authorization"] == f"Bearer {KEY}"
        if self.failing:
            return web.json_response({"error": {"type": "api_error", "message": "try later"}}, status=500)
        if ident not in self.objects:
            return web.json_response({"error": {"type": "invalid_request_error", "code": "resource_missing",
                                                "message": f"No such object: '{ident}'"}}, status=404)
        return web.json_response(self.objects[ident])


@pytest.fixture
async def fake_stripe(aiohttp_server):
    fake = FakeStripe()
    server = await aiohttp_server(fake.app, host="127.0.0.1")
    fake.url = str(server.make_url("")).rstrip("/")
    return fake


class TestAskingAnApiOfStripesShape:
    async def test_by_the_payment_intent_when_the_dispute_names_no_charge(self, start, fake_stripe):
        fake_stripe.objects["pi_3"] = {"id": "pi_3", "object": "payment_intent", "customer": "cus_3",
                                       "latest_charge": "ch_3", "status": "succeeded", "amount": 2000}
        gate = await start(fake_stripe.url)
        await play(gate, subscribed("cus_3", 3).events)
        opened = se.event("charge.dispute.created", dispute("dp_3", "needs_response", charge=None,
                                                            payment_intent="pi_3"), time.time(), "evt_dp_3")
        (answer,) = await play(gate, [opened])
        assert (answer["subject"], answer["status"]) == ("user3", "disputed")
        assert fake_stripe.asked == ["pi_3"]

    async def test_stripe_not_answering_is_a_503_and_the_retry_applies_it_once(self, start, fake_stripe):
        fake_stripe.objects["ch_4"] = {"id": "ch_4", "object": "charge", "customer": "cus_4", "payment_intent": None,
                                       "status": "succeeded", "amount": 2000}
        gate = await start(fake_stripe.url)
        await play(gate, subscribed("cus_4", 4).events)
        opened = se.event("charge.dispute.created", dispute("dp_4", "needs_response", charge="ch_4",
                                                            payment_intent=None), time.time(), "evt_dp_4")
        fake_stripe.failing = True
        status, answer = await _deliver(gate, opened)
        assert (status, answer["error"]) == (503, "stripe_unavailable")
        assert len(fake_stripe.asked) == 3          # the stripe package's own retries (max_network_retries=2)
        assert "evt_dp_4" not in await outcomes(gate, "user4")
        assert (await view(gate, "user4"))["status"] == "paid"
        fake_stripe.failing = False                 # Stripe delivers the event again
        status, answer = await _deliver(gate, opened)
        assert (status, answer["status"], answer["duplicate"]) == (200, "disputed", False)
        status, answer = await _deliver(gate, opened)
        assert answer["duplicate"] is True

    async def test_a_charge_recorded_stale_is_linked_and_its_dispute_asks_nothing(self, start, fake_stripe):
        """The charge came after an admin's change of its subject (recorded stale): it links all the same."""
        gate = await start(fake_stripe.url)
        life = Life(8, "user8", time.time() - 20 * DAY)
        life.subscribe("A", life.start)
        paid = next(e for e in life.events if e["type"] == "charge.succeeded")
        await play(gate, [e for e in life.events if e is not paid])
        assert (await gate.post("/v1/subjects/user8/transition", {"action": "drop_addon", "reason": "x"}))[0] == 200
        (answer,) = await play(gate, [paid])
        assert (answer["outcome"], answer["subject"]) == ("stale", "user8")
        opened = se.event("charge.dispute.created", dispute("dp_8", "needs_response", charge="ch_in_A8_1",
                                                            payment_intent=None), time.time() + 1, "evt_dp_8")
        (answer,) = await play(gate, [opened])
        assert (answer["subject"], answer["status"]) == ("user8", "disputed")
        assert fake_stripe.asked == []

    async def test_without_a_secret_key_nothing_is_asked(self, start, fake_stripe):
        gate = await start(fake_stripe.url, STRIPE_SECRET_KEY="")
        opened = se.event("charge.dispute.created", dispute("dp_5", "needs_response", charge="ch_5",
                                                            payment_intent=None), time.time(), "evt_dp_5")
        (answer,) = await play(gate, [opened])
        assert answer["outcome"] == "pending" and fake_stripe.asked == []


async def _deliver(gate, evt: dict) -> tuple[int, dict]:
    from tests.server.test_webhook import deliver
    return await deliver(gate, evt)


def one_customer(customer: str, start: float) -> tuple[Life, Life]:
    """Two workspaces (wsA, wsB) one customer pays for, each subscribed on its own (its subscription's metadata
    names it); B's renewal then fails."""
    a, b = Life(6, "wsA", start), Life(7, "wsB", start)
    a.subscribe("A", start)
    b.subscribe("B", start + HOUR)
    b.fail("B", "in_B7_2", start + 30 * DAY, (start + 30 * DAY, start + 60 * DAY), 1)
    for e in a.events + b.events:
        if e["data"]["object"].get("customer") is not None:
            e["data"]["object"]["customer"] = customer
    return a, b


class TestACustomerOfSeveralSubjects:
    """One Stripe customer pays for two subjects: whose a charge or a dispute is, the customer does not say."""

    async def test_a_payment_and_its_dispute_are_the_subject_whose_invoice_it_paid(self, start, fake_stripe):
        a, b = one_customer("cus_x", time.time() - 30 * DAY - 2 * HOUR)
        for inv in ("in_B7_1", "in_B7_2"):
            fake_stripe.paid[f"pi_{inv}"] = invoice(inv, "paid", subscription="sub_B7", customer="cus_x",
                                                    period=(b.start, b.start + 30 * DAY))
        gate = await start(fake_stripe.url, plan=PLAN)
        await play(gate, a.events + b.events)
        assert ((await view(gate, "wsA"))["status"], (await view(gate, "wsB"))["status"]) == ("paid", "grace_period")
        # B's first charge, the customer's second subject's already: asked (A's was before B held the customer).
        assert fake_stripe.asked == ["invoice_payments:pi_in_B7_1"]
        assert ("charge.succeeded", "noop") in (await outcomes(gate, "wsB")).values()
        # B's failed renewal is paid by a new payment; the bank takes it back.
        paid = b.add("charge.succeeded", charge("ch_in_B7_2", customer="cus_x", payment_intent="pi_in_B7_2"),
                     time.time() - HOUR)
        (answer,) = await play(gate, [paid])
        assert answer["subject"] == "wsB"
        lost = b.add("charge.dispute.closed", dispute("dp_7", "lost", charge="ch_in_B7_2",
                                                      payment_intent="pi_in_B7_2"), time.time())
        (answer,) = await play(gate, [lost])
        assert (answer["subject"], answer["status"]) == ("wsB", "chargeback")
        assert (await view(gate, "wsA"))["status"] == "paid"
        assert not {paid["id"], lost["id"]} & set(await outcomes(gate, "wsA"))
        # The dispute found its subject by the charge's link: nothing more was asked.
        assert fake_stripe.asked == ["invoice_payments:pi_in_B7_1", "invoice_payments:pi_in_B7_2"]

    async def test_stripe_not_answering_is_a_503_and_the_retry_places_it(self, start, fake_stripe):
        a, b = one_customer("cus_x", time.time() - 30 * DAY - 2 * HOUR)
        fake_stripe.paid["pi_in_B7_1"] = invoice("in_B7_1", "paid", subscription="sub_B7", customer="cus_x",
                                                 period=(b.start, b.start + 30 * DAY))
        gate = await start(fake_stripe.url, plan=PLAN)
        fake_stripe.failing = True
        first_charge = next(e for e in b.events if e["type"] == "charge.succeeded")
        await play(gate, a.events + b.events[:b.events.index(first_charge)])
        status, answer = await _deliver(gate, first_charge)
        assert (status, answer["error"]) == (503, "stripe_unavailable")
        assert first_charge["id"] not in {**await outcomes(gate, "wsA"), **await outcomes(gate, "wsB")}
        fake_stripe.failing = False                 # Stripe delivers the event again
        status, answer = await _deliver(gate, first_charge)
        assert (status, answer["subject"], answer["duplicate"]) == (200, "wsB", False)

    @pytest.mark.parametrize("key", [KEY, ""], ids=["stripe-does-not-know", "no-secret-key"])
    async def test_when_nothing_says_whose_nothing_is_applied(self, start, fake_stripe, key):
        a, b = one_customer("cus_x", time.time() - 30 * DAY - 2 * HOUR)
        fake_stripe.objects["ch_9"] = charge("ch_9", customer="cus_x", payment_intent="pi_9")
        gate = await start(fake_stripe.url, plan=PLAN, STRIPE_SECRET_KEY=key)
        await play(gate, a.events + b.events)
        paid = b.add("charge.succeeded", charge("ch_9", customer="cus_x", payment_intent="pi_9"), time.time() - HOUR)
        lost = b.add("charge.dispute.closed", dispute("dp_9", "lost", charge="ch_9", payment_intent="pi_9"),
                     time.time())
        answers = await play(gate, [paid, lost])
        assert [(x["outcome"], x["subject"]) for x in answers] == [("pending", None)] * 2
        # A later event naming wsA and the customer adopts neither.
        renewal = a.start + 30 * DAY
        a.status("A", "active", time.time(), (renewal, renewal + 30 * DAY), a.start)
        (answer,) = await play(gate, a.events[-1:])
        assert answer["subject"] == "wsA"
        assert ((await view(gate, "wsA"))["status"], (await view(gate, "wsB"))["status"]) == ("paid", "grace_period")
        for subject in ("wsA", "wsB"):
            assert not {paid["id"], lost["id"]} & set(await outcomes(gate, subject))
        if key:
            assert "invoice_payments:pi_9" in fake_stripe.asked
