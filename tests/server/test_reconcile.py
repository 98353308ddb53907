"""Reconciliation against a Stripe-shaped server on 127.0.0.1: it folds what Stripe says of a subscription when
that is news to the subject, and only confirms the subject when Stripe says what it holds already, so that an
admin's decision made since those facts stands."""
from __future__ import annotations

import logging
import time

import pytest

from plangate.server.http.api import GATE
from plangate.server.stripe import reconcile as reconcile_module

from . import stripe_events as se
from .stripe_meters import KEY, FakeStripe
from .test_entitlements import database  # noqa: F401
from .test_webhook import deliver, status_of

DAY = 86400.0


@pytest.fixture
async def fake(aiohttp_server):
    fake = FakeStripe()
    server = await aiohttp_server(fake.app(), host="127.0.0.1")
    fake.url = str(server.make_url("")).rstrip("/")
    return fake


async def reconcile(gate) -> int:
    status, body = await gate.post("/v1/jobs/reconcile")
    assert status == 200, body
    return body["result"]


async def test_stripes_old_facts_do_not_undo_an_admins_decision_and_its_news_does(start_gate, database, fake):
    gate = await start_gate(database=database, STRIPE_WEBHOOK_SECRET=se.SECRET, STRIPE_SECRET_KEY=KEY,
                            STRIPE_API_BASE=fake.url, PLANGATE_RECONCILE_AFTER="60")
    now = time.time()
    await deliver(gate, se.event("customer.subscription.created", se.subscription("active", "alice"), now - 6 * DAY))
    await deliver(gate, se.event("customer.subscription.updated", se.subscription("unpaid", "alice"), now - 4 * DAY))
    assert await status_of(gate, "alice") == "billing_problem"
    status, _ = await gate.post("/v1/subjects/alice/transition", {"to": "paid", "reason": "paid by bank transfer"})
    assert status == 200

    # Days later, unconfirmed since: Stripe still says unpaid, as it did before the admin's decision.
    fake.subscriptions["sub_1"] = se.subscription("unpaid", "alice")
    core = gate.app[GATE]
    real = core.clock
    core.clock = lambda: real() + 3 * DAY
    assert await reconcile(gate) == 0
    assert await status_of(gate, "alice") == "paid"
    _, view = await gate.get("/v1/subjects/alice")
    assert [t["trigger"] for t in view["transitions"]][0] == "admin:override"

    # Then Stripe's subscription ends: that is news, and it is folded.
    fake.subscriptions["sub_1"] = se.subscription("canceled", "alice")
    core.clock = lambda: real() + 6 * DAY
    assert await reconcile(gate) == 1
    assert await status_of(gate, "alice") == "canceled"


async def test_a_subject_stripe_does_not_answer_for_holds_back_no_other(start_gate, database, fake):
    """The first subject's call fails (Stripe down for a moment): it is asked again next run, and the subjects
    after it are reconciled now. Before, the whole run failed, and since the same subject came first every time
    (the least recently confirmed) reconciliation never went past it."""
    gate = await start_gate(database=database, STRIPE_WEBHOOK_SECRET=se.SECRET, STRIPE_SECRET_KEY=KEY,
                            STRIPE_API_BASE=fake.url)
    now = time.time()
    for n, subject in enumerate(("bob", "cat")):
        ids = {"sub_id": f"sub_{n}", "customer": f"cus_{n}"}
        await deliver(gate, se.event("customer.subscription.created", se.subscription("active", subject, **ids),
                                     now - 6 * DAY))
        await deliver(gate, se.event("customer.subscription.updated", se.subscription("unpaid", subject, **ids),
                                     now - 4 * DAY))
        fake.subscriptions[ids["sub_id"]] = se.subscription("active", subject, **ids)     # paid since
    fake.failing = 1
    assert await reconcile(gate) == 1
    assert sorted([await status_of(gate, s) for s in ("bob", "cat")]) == ["billing_problem", "paid"]
    assert await reconcile(gate) == 1
    assert [await status_of(gate, s) for s in ("bob", "cat")] == ["paid", "paid"]


async def test_subscriptions_stripe_does_not_know_do_not_take_every_run_s_places(start_gate, database, fake,
                                                                                  monkeypatch):
    """Two subjects whose subscriptions Stripe answers 404 for (another account, test ids under a live key), in a
    batch of two: asked, they go after the others, and the next run reaches bob, whose payment came. Before, they
    were never marked asked and took the first places of every run for ever."""
    monkeypatch.setattr(reconcile_module, "RECONCILE_BATCH", 2)
    gate = await start_gate(database=database, STRIPE_WEBHOOK_SECRET=se.SECRET, STRIPE_SECRET_KEY=KEY,
                            STRIPE_API_BASE=fake.url)
    now = time.time()
    for n, subject in enumerate(("ghost1", "ghost2", "bob")):
        ids = {"sub_id": f"sub_{n}", "customer": f"cus_{n}"}
        await deliver(gate, se.event("customer.subscription.created", se.subscription("active", subject, **ids),
                                     now - 6 * DAY + n))
        await deliver(gate, se.event("customer.subscription.updated", se.subscription("unpaid", subject, **ids),
                                     now - 4 * DAY + n))
    fake.subscriptions["sub_2"] = se.subscription("active", "bob", sub_id="sub_2", customer="cus_2")    # paid since
    assert await reconcile(gate) == 0 and fake.subscriptions_asked == 2         # the two Stripe does not know
    assert await reconcile(gate) == 1
    assert await status_of(gate, "bob") == "paid"


async def test_a_run_ends_when_stripe_answers_for_no_one(start_gate, database, fake):
    """Stripe is down, not one subject: after three subjects in a row without an answer the run ends (each may
    take seconds to give up), and the next run asks again."""
    gate = await start_gate(database=database, STRIPE_WEBHOOK_SECRET=se.SECRET, STRIPE_SECRET_KEY=KEY,
                            STRIPE_API_BASE=fake.url)
    now = time.time()
    for n in range(5):
        ids = {"sub_id": f"sub_{n}", "customer": f"cus_{n}"}
        await deliver(gate, se.event("customer.subscription.created", se.subscription("active", f"u{n}", **ids),
                                     now - 6 * DAY))
        await deliver(gate, se.event("customer.subscription.updated", se.subscription("unpaid", f"u{n}", **ids),
                                     now - 4 * DAY))
        fake.subscriptions[ids["sub_id"]] = se.subscription("active", f"u{n}", **ids)
    fake.failing = 100
    assert await reconcile(gate) == 0 and fake.subscriptions_asked == 3
    fake.failing = 0
    assert await reconcile(gate) == 5


async def trials_turned_active(gate, subjects, trial_end: float) -> None:
    """A trial for each subject (sub_N, cus_N), turned `active` by Stripe at its end (no payment yet)."""
    for n, subject in enumerate(subjects):
        ids = {"sub_id": f"sub_{n}", "customer": f"cus_{n}"}
        trialing = {**se.subscription("trialing", subject, **ids), "trial_end": int(trial_end)}
        await deliver(gate, se.event("customer.subscription.created", trialing, trial_end - 7 * DAY))
        turned = se.event("customer.subscription.updated", {**trialing, "status": "active"}, trial_end)
        turned["data"]["previous_attributes"] = {"status": "trialing"}
        await deliver(gate, turned)


async def test_stripes_active_subscription_is_no_payment_unless_the_subject_knew_it_otherwise(start_gate, database,
                                                                                              fake):
    """The trial's timer ran out into billing_problem while Stripe's subscription said `active` (the first charge
    late). Stripe still says `active` (a cancellation at the period's end is all that changed): that is news,
    folded, but no payment, so the subject stays in billing_problem. Before, any replay saying `active` made it
    paid. A subject that knew the subscription past_due is made paid by the same replay (the recovery of a lost
    invoice.paid): the replay carries the status it knew as the previous one."""
    gate = await start_gate(database=database, STRIPE_WEBHOOK_SECRET=se.SECRET, STRIPE_SECRET_KEY=KEY,
                            STRIPE_API_BASE=fake.url, PLANGATE_RECONCILE_AFTER="60")
    now = time.time()
    trial_end = now - 5 * DAY
    await trials_turned_active(gate, ("lena", "paul"), trial_end)
    late = se.event("customer.subscription.updated", {**se.subscription("past_due", "paul", sub_id="sub_1",
                                                                        customer="cus_1")}, trial_end + 3600)
    late["data"]["previous_attributes"] = {"status": "active"}
    await deliver(gate, late)
    assert (await gate.post("/v1/jobs/sweep"))[0] == 200
    assert [await status_of(gate, s) for s in ("lena", "paul")] == ["billing_problem", "billing_problem"]

    for n, subject in enumerate(("lena", "paul")):
        ids = {"sub_id": f"sub_{n}", "customer": f"cus_{n}"}
        fake.subscriptions[ids["sub_id"]] = {**se.subscription("active", subject, **ids), "trial_end": int(trial_end),
                                             "cancel_at_period_end": True, "cancel_at": int(now + 20 * DAY)}
    core = gate.app[GATE]
    real = core.clock
    core.clock = lambda: real() + DAY
    assert await reconcile(gate) == 1
    assert [await status_of(gate, s) for s in ("lena", "paul")] == ["billing_problem", "paid"]


async def test_a_paid_latest_invoice_recovers_a_subject_whose_invoice_paid_was_lost(start_gate, database, fake):
    """billing_problem entered by the trial's timer while Stripe said `active` (the first charge late); the charge
    then went through and its invoice.paid was lost. Stripe's subscription still says `active`, which proves no
    payment; its latest invoice, paid, does, and is folded as the invoice.paid that would have told us. A subject
    whose latest invoice is still open stays where it is."""
    gate = await start_gate(database=database, STRIPE_WEBHOOK_SECRET=se.SECRET, STRIPE_SECRET_KEY=KEY,
                            STRIPE_API_BASE=fake.url, PLANGATE_RECONCILE_AFTER="60")
    now = time.time()
    trial_end = now - 5 * DAY
    await trials_turned_active(gate, ("lena", "paul"), trial_end)
    assert (await gate.post("/v1/jobs/sweep"))[0] == 200
    assert [await status_of(gate, s) for s in ("lena", "paul")] == ["billing_problem", "billing_problem"]

    for n, (subject, invoice) in enumerate((("lena", "paid"), ("paul", "open"))):
        ids = {"sub_id": f"sub_{n}", "customer": f"cus_{n}"}
        fake.invoices[f"in_{n}"] = {**se.invoice(invoice, inv_id=f"in_{n}", **ids), "billing_reason": "subscription_cycle",
                                    "status_transitions": {"paid_at": int(now - DAY) if invoice == "paid" else None}}
        fake.subscriptions[ids["sub_id"]] = {**se.subscription("active", subject, **ids), "trial_end": int(trial_end),
                                             "latest_invoice": f"in_{n}"}
    core = gate.app[GATE]
    real = core.clock
    core.clock = lambda: real() + DAY
    assert await reconcile(gate) == 1
    assert [await status_of(gate, s) for s in ("lena", "paul")] == ["paid", "billing_problem"]
    _, view = await gate.get("/v1/subjects/lena")
    assert view["transitions"][0]["trigger"] == "stripe:invoice.paid"
    core.clock = lambda: real() + 2 * DAY
    assert await reconcile(gate) == 0           # paul's invoice still open; lena no longer doubtful


async def test_a_paid_invoice_older_than_an_admins_decision_does_not_undo_it(start_gate, database, fake):
    """The latest invoice is folded where it was paid: an admin who moved the subject to billing_problem since
    (the payment was reversed by other means) is not overruled by reconciliation."""
    gate = await start_gate(database=database, STRIPE_WEBHOOK_SECRET=se.SECRET, STRIPE_SECRET_KEY=KEY,
                            STRIPE_API_BASE=fake.url, PLANGATE_RECONCILE_AFTER="60")
    now = time.time()
    await deliver(gate, se.event("customer.subscription.created", se.subscription("active", "mona"), now - 6 * DAY))
    fake.invoices["in_1"] = {**se.invoice("paid"), "billing_reason": "subscription_cycle",
                             "status_transitions": {"paid_at": int(now - 2 * DAY)}}
    fake.subscriptions["sub_1"] = {**se.subscription("active", "mona"), "latest_invoice": "in_1"}
    status, _ = await gate.post("/v1/subjects/mona/transition", {"to": "billing_problem", "reason": "bank reversal"})
    assert status == 200
    core = gate.app[GATE]
    real = core.clock
    core.clock = lambda: real() + DAY
    assert await reconcile(gate) == 0
    assert await status_of(gate, "mona") == "billing_problem"


@pytest.mark.parametrize("each_database", ["sqlite"], indirect=True)     # about settings, not the store
async def test_a_gate_without_a_stripe_key_says_at_start_that_it_asks_stripe_nothing(start_gate, database, caplog):
    """Without STRIPE_SECRET_KEY the reconcile job answered 0 and logged nothing: a lost webhook was never
    recovered, unseen."""
    caplog.set_level(logging.WARNING, logger="plangate")
    gate = await start_gate(STRIPE_WEBHOOK_SECRET=se.SECRET)
    assert await reconcile(gate) == 0
    assert [r for r in caplog.records if r.getMessage() == "stripe_api_disabled"]
    caplog.clear()
    await start_gate(database=database + ".keyed", STRIPE_WEBHOOK_SECRET=se.SECRET, STRIPE_SECRET_KEY=KEY,
                     STRIPE_API_BASE="http://127.0.0.1:9")
    assert not [r for r in caplog.records if r.getMessage() == "stripe_api_disabled"]


async def test_a_stripe_answer_comes_after_an_event_of_its_second_already_folded(start_gate, database, fake):
    """rita's renewal fails (the event's `created` is second S, Stripe's whole seconds) and is folded: grace. She
    pays at once, and the payment's webhooks are late (or lost: what reconciliation is for). The run begins 0.4 s
    into S and Stripe answers `active`, which includes the failure. The answer, dated when the run began, comes
    after the failure in the fold: rita is paid (dated before its second, it was folded under the failure, which
    then put her back in grace; found by a reviewer)."""
    gate = await start_gate(database=database, STRIPE_WEBHOOK_SECRET=se.SECRET, STRIPE_SECRET_KEY=KEY,
                            STRIPE_API_BASE=fake.url)
    now = time.time()
    await deliver(gate, se.event("customer.subscription.created", se.subscription("active", "rita"), now - 6 * DAY))
    second = int(time.time()) + 2
    failed = se.event("customer.subscription.updated", se.subscription("past_due", "rita"), second)
    failed["data"]["previous_attributes"] = {"status": "active"}
    status, body = await deliver(gate, failed)
    assert status == 200 and body["outcome"] == "applied", body
    assert await status_of(gate, "rita") == "grace_period"
    fake.subscriptions["sub_1"] = se.subscription("active", "rita")      # paid since; its webhooks not here yet
    gate.app[GATE].clock = lambda: second + 0.4
    status, body = await gate.post("/v1/jobs/reconcile")
    assert status == 200, body
    assert await status_of(gate, "rita") == "paid", body
