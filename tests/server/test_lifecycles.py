"""The lifecycle corpus (scenarios/lifecycles/), each lifecycle three ways: through `plangate test`, delivered in
order into a running gate (real aiohttp on 127.0.0.1, SQLite, events signed with the stripe package), and
shuffled with repeat deliveries into a running gate. All three end where the lifecycle's story says."""
from __future__ import annotations

import json
import random
from datetime import datetime, UTC

import pytest

from plangate.engine.cli import EXIT_PASSED, run_scenarios
from plangate.lifecycles import corpus
from plangate.server.http import api

from . import stripe_events as se
from .conftest import PLAN, ROOT

CORPUS = ROOT / "scenarios" / "lifecycles"
LIVES = list(corpus(CORPUS))
IDS = [life.name for life in LIVES]


def test_the_corpus_holds_at_least_ten_lifecycles_with_every_kind_of_event():
    assert len(LIVES) >= 10
    types = {e["type"] for life in LIVES for e in life.events}
    assert {"customer.created", "payment_method.attached", "invoice.created", "invoice.finalized", "invoice.paid",
            "invoice.payment_succeeded", "invoice.payment_failed", "invoice.payment_action_required",
            "payment_intent.succeeded", "charge.succeeded", "charge.failed", "customer.subscription.created",
            "customer.subscription.updated", "customer.subscription.paused", "customer.subscription.resumed",
            "customer.subscription.deleted", "customer.subscription.trial_will_end",
            "checkout.session.completed", "charge.refunded"} <= types
    # Stripe sends several events in one second: the corpus has ties in `created`.
    assert all(len({e["created"] for e in life.events}) < len(life.events) for life in LIVES)
    # The current API shape: an invoice names its subscription under parent.subscription_details.
    invoices = [e["data"]["object"] for life in LIVES for e in life.events
                if e["data"]["object"]["object"] == "invoice"]
    assert invoices and all("subscription" not in i and i["parent"]["subscription_details"]["subscription"]
                            for i in invoices)


@pytest.mark.parametrize("life", LIVES, ids=IDS)
def test_through_plangate_test(life, capsys):
    assert run_scenarios([str(PLAN), str(CORPUS / life.name / "story.yaml")]) == EXIT_PASSED, capsys.readouterr().out


async def _deliver(gate, event: dict) -> dict:
    body = json.dumps(event)
    status, answer = await gate.post("/webhook/stripe", raw=body.encode(), token=None,
                                     headers={"Stripe-Signature": se.sign(body), "Content-Type": "application/json"})
    assert status == 200, (event["id"], event["type"], answer)
    return answer


async def _ends_where_the_story_says(gate, life, clock):
    clock.now = life.ends_at
    status, _ = await gate.post("/v1/jobs/sweep")
    assert status == 200
    status, view = await gate.get(f"/v1/subjects/{life.subject}")
    assert status == 200 and view["known"]
    assert {key: view[key] for key in life.ends} == life.ends, view["transitions"]


class _Clock:
    """The gate's clock, moved by the test: the lifecycle's events happen days apart."""

    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


async def _started(start_gate, life) -> tuple[object, _Clock]:
    gate = await start_gate(STRIPE_WEBHOOK_SECRET=se.SECRET)
    clock = _Clock(life.events[0]["created"])
    gate.app[api.GATE].clock = clock
    return gate, clock


@pytest.mark.parametrize("life", LIVES, ids=IDS)
async def test_in_order_into_a_running_gate(start_gate, life):
    gate, clock = await _started(start_gate, life)
    for event in life.events:
        clock.now = max(clock.now, event["created"] + 2)     # delivered two seconds after it happened
        answer = await _deliver(gate, event)
        # (An event Stripe sends after another of the same second that the fold orders after it, say an invoice's
        # after the subscription's update, may be answered `stale`: folded in before it, it changes nothing.)
        assert answer["outcome"] != "pending" and not answer["duplicate"], (event["type"], answer)
    await _ends_where_the_story_says(gate, life, clock)


@pytest.mark.parametrize("life", LIVES, ids=IDS)
async def test_shuffled_with_repeats_into_a_running_gate(start_gate, life):
    gate, clock = await _started(start_gate, life)
    rng = random.Random(f"{life.name}-shuffle")
    deliveries = list(life.events) + rng.sample(list(life.events), k=max(1, len(life.events) // 4))
    rng.shuffle(deliveries)
    seen = set()
    for event in deliveries:
        clock.now = max(clock.now, event["created"] + 2)
        answer = await _deliver(gate, event)
        assert answer["duplicate"] == (event["id"] in seen and answer["outcome"] != "ignored"), answer
        seen.add(event["id"])
    await _ends_where_the_story_says(gate, life, clock)


async def test_a_dispute_waiting_for_a_charge_that_waits_for_its_customer_is_folded_in(start_gate):
    """The dispute names only its charge; the charge names only its customer, not linked yet. Both wait; the
    subscription links the customer, which folds the charge in and links the charge: the dispute waiting for it
    must follow (it stayed pending for good, and the customer kept paid access the bank took back)."""
    life = next(life for life in LIVES if life.name == "dispute-lost")
    gate, clock = await _started(start_gate, life)
    disputes = [e for e in life.events if e["type"].startswith("charge.dispute.")]
    charges = [e for e in life.events if e["type"] == "charge.succeeded"]
    assert disputes and len(charges) == 1
    first = disputes + charges      # before anything links the customer
    for event in first + [e for e in life.events if e not in first]:
        clock.now = max(clock.now, event["created"] + 2)
        await _deliver(gate, event)
    await _ends_where_the_story_says(gate, life, clock)


async def test_the_sweep_fires_a_timer_anchored_to_trial_end_and_keeps_the_date(start_gate):
    """The trial's events up to trial_end, and no word of the first charge: the stored timer is trial_end + 2h,
    and the sweep fires it then (not at 7 days from checkout, not before)."""
    life = next(life for life in LIVES if life.name == "trial-converts")
    gate, clock = await _started(start_gate, life)
    trial_end = next(e["data"]["object"]["trial_end"] for e in life.events
                     if e["type"] == "customer.subscription.created")
    for event in life.events:
        if event["created"] > trial_end:
            break
        clock.now = max(clock.now, event["created"] + 2)
        await _deliver(gate, event)
    status, view = await gate.get(f"/v1/subjects/{life.subject}")
    due = datetime.fromtimestamp(trial_end + 2 * 3600, UTC).isoformat().replace("+00:00", "Z")
    assert view["status"] == "paid_trial" and view["timer_due"] == due
    clock.now = trial_end + 2 * 3600 - 1
    await gate.post("/v1/jobs/sweep")
    assert (await gate.get(f"/v1/subjects/{life.subject}"))[1]["status"] == "paid_trial"
    clock.now = trial_end + 2 * 3600
    await gate.post("/v1/jobs/sweep")
    _, view = await gate.get(f"/v1/subjects/{life.subject}")
    assert view["status"] == "billing_problem" and view["transitions"][0]["trigger"] == "timer"


@pytest.mark.parametrize("deleted_last", [False, True])
async def test_an_invoice_paid_after_the_cancellation_is_recorded_as_an_ended_subscriptions(start_gate, deleted_last):
    """canceled-then-paid-late: the customer pays the open invoice after Stripe canceled the subscription. Its
    invoice.paid and invoice.payment_succeeded are recorded `ended_subscription` and the subject stays canceled,
    also when Stripe delivers the cancellation after the payment (the refold records them so then)."""
    life = next(life for life in LIVES if life.name == "canceled-then-paid-late")
    gate, clock = await _started(start_gate, life)
    deleted = [e for e in life.events if e["type"] == "customer.subscription.deleted"]
    for event in [e for e in life.events if e not in deleted] + deleted if deleted_last else life.events:
        clock.now = max(clock.now, event["created"] + 2)
        await _deliver(gate, event)
    await _ends_where_the_story_says(gate, life, clock)
    late = {e["id"] for e in life.events if e["type"] in ("invoice.paid", "invoice.payment_succeeded")
            and e["created"] > deleted[0]["created"]}
    status, log = await gate.get("/v1/events?outcome=ended_subscription&limit=200")
    assert status == 200 and {e["id"] for e in log["events"]} == late and len(late) == 2
