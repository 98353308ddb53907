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
from tests.server.stripe_lifecycles import DAY, Life, dispute
from tests.server.test_webhook_subscriptions import QUIET, outcomes, plan_file, play, view

from .conftest import KEY

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(params=["sqlite", "postgresql"])
def start(request, start_gate, tmp_path):
    """start(api_base) -> a gate on the test plan over the store of the parameter, asking Stripe at api_base."""
    database = request.getfixturevalue("pg_dsn") if request.param == "postgresql" else str(tmp_path / "g.sqlite3")

    async def run(api_base: str, **env):
        return await start_gate(plan=plan_file(tmp_path, False), database=database,
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
    """Stripe's API for charges and payment intents, on 127.0.0.1: answers 500 while `failing`, and counts."""

    def __init__(self):
        self.objects: dict[str, dict] = {}
        self.failing = False
        self.asked: list[str] = []
        self.app = web.Application()
        self.app.router.add_get("/v1/{kind}/{ident}", self.retrieve)

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

    async def test_without_a_secret_key_nothing_is_asked(self, start, fake_stripe):
        gate = await start(fake_stripe.url, STRIPE_SECRET_KEY="")
        opened = se.event("charge.dispute.created", dispute("dp_5", "needs_response", charge="ch_5",
                                                            payment_intent=None), time.time(), "evt_dp_5")
        (answer,) = await play(gate, [opened])
        assert answer["outcome"] == "pending" and fake_stripe.asked == []


async def _deliver(gate, evt: dict) -> tuple[int, dict]:
    from tests.server.test_webhook import deliver
    return await deliver(gate, evt)
