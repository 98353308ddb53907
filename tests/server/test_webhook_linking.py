"""Events that arrive before the event that links them to their subject, or at the same moment.

Stripe (and localstripe, see tests/e2e) sends the events of one change together: `invoice.paid` and the
`customer.subscription.created` or `checkout.session.completed` that names its subject arrive within
milliseconds. Where two deliveries race, the store is patched to hold a read at the worst moment, so the
interleaving is certain.
"""
from __future__ import annotations

import asyncio
import time

import pytest

from plangate.server.http.api import GATE

from . import stripe_events as se
from .test_webhook import deliver, q, status_of

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
async def hook(start_gate):
    return await start_gate(STRIPE_WEBHOOK_SECRET=se.SECRET)


async def test_an_event_whose_lookup_misses_a_link_committed_meanwhile_is_not_stranded(hook, monkeypatch):
    """The invoice looks for its subject before the subscription's link commits, and is recorded pending after
    the link's own look for waiting events: it must still be applied, not wait for ever."""
    store = hook.app[GATE].store
    real_lookup = store.lookup
    looking, linked = asyncio.Event(), asyncio.Event()

    async def lookup_before_the_link(event_id, subject, customer, subscription, payments=()):
        if not looking.is_set():        # the first lookup answers what the store held before the link committed
            found = await real_lookup(event_id, subject, customer, subscription, payments)
            assert found == (False, None, None)
            looking.set()
            await linked.wait()
            return found
        return await real_lookup(event_id, subject, customer, subscription, payments)

    monkeypatch.setattr(store, "lookup", lookup_before_the_link)
    now = time.time()
    paid = asyncio.create_task(deliver(hook, se.event("invoice.paid", se.invoice("paid"), now - 10)))
    await looking.wait()
    status, answer = await deliver(hook, se.event("checkout.session.completed", se.checkout("alice"), now - 20))
    assert (status, answer["status"]) == (200, "paid_trial")     # the invoice is not recorded yet
    linked.set()
    status, answer = await paid
    assert status == 200 and answer["duplicate"] is False

    assert await status_of(hook, "alice") == "paid"
    assert q(hook.database, "SELECT type, outcome, subject FROM subscription_events ORDER BY created") == \
        [("checkout.session.completed", "applied", "alice"), ("invoice.paid", "applied", "alice")]
    assert q(hook.database, "SELECT from_status, to_status FROM transitions ORDER BY id") == \
        [("limited_free_trial", "paid_trial"), ("paid_trial", "paid")]


async def test_two_links_adopting_one_waiting_event_at_once_apply_it_once(hook, monkeypatch):
    """Two linking events (the checkout and the subscription) both find the same waiting invoice: it is
    folded in once, and keeps the outcome of that fold."""
    store = hook.app[GATE].store
    real_pending = store.pending
    arrived, calls = asyncio.Event(), []

    async def pending_read_by_both(customer, subscription, payments=()):
        rows = await real_pending(customer, subscription, payments)
        calls.append(rows)
        if len(calls) <= 2:             # both adopters read the waiting rows before either commits
            if len(calls) == 2:
                arrived.set()
            try:
                await asyncio.wait_for(arrived.wait(), 2.0)
            except TimeoutError:
                pass
        return rows

    now = time.time()
    _, answer = await deliver(hook, se.event("invoice.paid", se.invoice("paid"), now - 10))
    assert answer["outcome"] == "pending"
    monkeypatch.setattr(store, "pending", pending_read_by_both)
    answers = await asyncio.gather(
        deliver(hook, se.event("checkout.session.completed", se.checkout("alice"), now - 30)),
        deliver(hook, se.event("customer.subscription.created", se.subscription("trialing", "alice"), now - 20)))
    assert all(status == 200 for status, _ in answers)

    assert await status_of(hook, "alice") == "paid"
    assert q(hook.database, "SELECT type, outcome FROM subscription_events ORDER BY created") == \
        [("checkout.session.completed", "applied"), ("customer.subscription.created", "noop"),
         ("invoice.paid", "applied")]
    assert q(hook.database, "SELECT from_status, to_status FROM transitions ORDER BY id") == \
        [("limited_free_trial", "paid_trial"), ("paid_trial", "paid")]


async def test_a_payment_that_waited_for_its_link_gets_its_subject(hook):
    now = time.time()
    await deliver(hook, se.event("invoice.paid", se.invoice("paid", inv_id="in_early"), now - 10))
    assert q(hook.database, "SELECT invoice_id, subject FROM payments") == [("in_early", None)]
    await deliver(hook, se.event("checkout.session.completed", se.checkout("alice"), now - 20))
    assert await status_of(hook, "alice") == "paid"
    assert q(hook.database, "SELECT invoice_id, subject, status, amount FROM payments") == \
        [("in_early", "alice", "paid", 2000)]
