"""Stripe changes that owe nothing, through a real gate on the shipped plan (real aiohttp on 127.0.0.1, a SQLite
file, events signed with the stripe package): a declined upgrade that Stripe keeps pending is no failed renewal,
and a payment of the open invoice still ends dunning."""
from __future__ import annotations

import pytest

from plangate.server.http import api

from . import stripe_events as se
from .stripe_lifecycles import DAY, HOUR, Life, charge, invoice, payment_intent
from .test_webhook import deliver

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
START = 1_800_000_000
RENEWAL = START + 30 * DAY
PERIOD2 = (RENEWAL, RENEWAL + 30 * DAY)
TRIES = (HOUR, DAY + HOUR, 3 * DAY + HOUR, 6 * DAY + HOUR)      # Smart Retries of the renewal, from RENEWAL


class _Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


async def _gate(start_gate):
    gate = await start_gate(STRIPE_WEBHOOK_SECRET=se.SECRET)
    clock = _Clock(START)
    gate.app[api.GATE].clock = clock
    return gate, clock


async def _play(gate, clock, events: list[dict]) -> None:
    for evt in events:
        clock.now = max(clock.now, evt["created"] + 2)
        status, answer = await deliver(gate, evt)
        assert status == 200, answer


async def _at(gate, clock, when: float, subject: str) -> dict:
    """The subject at `when`, after the sweep fired what was due."""
    clock.now = max(clock.now, when)
    assert (await gate.post("/v1/jobs/sweep"))[0] == 200
    status, view = await gate.get(f"/v1/subjects/{subject}")
    assert status == 200
    return view


def _updated(life: Life, status: str, at: float, previous: dict, **extra) -> None:
    """customer.subscription.updated of A with Stripe's previous_attributes."""
    life.status("A", status, at, PERIOD2 if at >= RENEWAL else (START, RENEWAL), START, **extra)
    life.events[-1]["data"]["previous_attributes"] = previous


def _dunning(n: int) -> tuple[Life, str]:
    """A paid subscription whose renewal is declined at every Smart Retry: past_due, then grace runs out."""
    life = Life(n, f"user{n}", START)
    life.subscribe("A", START)
    inv = f"in_A{n}_2"
    _updated(life, "active", RENEWAL, {"items": {}})
    life.add("invoice.created", invoice(inv, "draft", subscription=life.sub_id("A"), customer=life.customer,
                                        period=PERIOD2), RENEWAL)
    for attempt, after in enumerate(TRIES, 1):
        life.fail("A", inv, RENEWAL + after, PERIOD2, attempt)
        if attempt == 1:
            _updated(life, "past_due", RENEWAL + after, {"status": "active"})
    return life, inv


class TestDunning:
    """A paid subscription whose renewal was declined at every retry."""

    async def test_a_payment_still_ends_it(self, start_gate):
        """The customer pays the open invoice on its hosted page: invoice.paid, then the subscription active."""
        gate, clock = await _gate(start_gate)
        life, inv = _dunning(2)
        paid_at = RENEWAL + TRIES[-1] + DAY
        life.pay_open("A", inv, paid_at, PERIOD2, attempts=len(TRIES) + 1)
        _updated(life, "active", paid_at, {"status": "past_due"})
        await _play(gate, clock, life.events)
        assert (await _at(gate, clock, paid_at + HOUR, "user2"))["status"] == "paid"


class TestADeclinedUpgradeKeptPendingIsNoFailedRenewal:
    """An upgrade with payment_behavior pending_if_incomplete and proration_behavior always_invoice whose proration
    invoice is declined: Stripe keeps the subscription `active` on its old price (the change waits in
    pending_update), voids the invoice when the pending update expires 23 hours later, and renews as usual."""

    def _life(self, n: int) -> Life:
        life = Life(n, f"user{n}", START)
        life.subscribe("A", START)
        at, inv, sub = START + 12 * DAY, f"in_A{n}_up", life.sub_id("A")
        prorated = {"subscription": sub, "customer": life.customer, "period": (at, RENEWAL),
                    "reason": "subscription_update", "amount": 1290}
        life.add("invoice.created", invoice(inv, "draft", **prorated), at)
        life.add("invoice.finalized", invoice(inv, "open", **prorated), at)
        life.add("charge.failed", charge(f"ch_{inv}", customer=life.customer, payment_intent=f"pi_{inv}",
                                         status="failed", amount=1290), at)
        life.add("payment_intent.payment_failed", payment_intent(f"pi_{inv}", "requires_payment_method",
                                                                 customer=life.customer, charge=f"ch_{inv}",
                                                                 amount=1290), at)
        life.add("invoice.payment_failed", invoice(inv, "open", attempts=1, **prorated), at)
        pending = {"expires_at": int(at + 23 * HOUR), "billing_cycle_anchor": None, "trial_end": None,
                   "trial_from_plan": None, "subscription_items": [{"price": "price_pro_yearly", "quantity": 1}]}
        _updated(life, "active", at, {"pending_update": None, "latest_invoice": f"in_A{n}_1"},
                 pending_update=pending, latest_invoice=inv)
        expired = at + 23 * HOUR
        life.status("A", "active", expired, (START, RENEWAL), START, pending_update=None, latest_invoice=inv)
        life.events[-1]["type"] = "customer.subscription.pending_update_expired"
        life.add("invoice.voided", invoice(inv, "void", **prorated), expired)
        _updated(life, "active", expired, {"pending_update": pending})
        return life

    async def test_the_subscriber_stays_paid_through_the_period_and_its_renewal(self, start_gate):
        gate, clock = await _gate(start_gate)
        life = self._life(3)
        await _play(gate, clock, life.events)
        assert (await _at(gate, clock, START + 13 * DAY, "user3"))["status"] == "paid"
        # The renewal: a new period at RENEWAL, its invoice charged about an hour later.
        _updated(life, "active", RENEWAL, {"items": {}})
        await _play(gate, clock, life.events[-1:])
        view = await _at(gate, clock, RENEWAL + 30 * 60, "user3")
        assert view["status"] == "paid", view["transitions"][:3]
        status, check = await gate.post("/v1/check", {"subject": "user3", "meter": "requests", "amount": 100})
        assert status == 200 and check["allowed"] is True, check

    async def test_an_upgrade_declined_without_pending_updates_still_starts_grace(self, start_gate):
        """The default payment_behavior (allow_incomplete) applies the upgrade and turns the subscription
        past_due: the customer owes the proration."""
        gate, clock = await _gate(start_gate)
        life = self._life(4)
        at = START + 12 * DAY
        life.events = [e for e in life.events if e["created"] <= at and e["type"] != "customer.subscription.updated"]
        _updated(life, "past_due", at, {"status": "active"})
        await _play(gate, clock, life.events)
        assert (await _at(gate, clock, at + HOUR, "user4"))["status"] == "grace_period"
