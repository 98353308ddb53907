"""Events that arrive before the event that links them to their subject, or at the same moment.

Stripe (and localstripe, see tests/e2e) sends the events of one change together: `invoice.paid` and the
`customer.subscription.created` or `checkout.session.completed` that names its subject arrive within
milliseconds. Where two deliveries race, another connection holds a lock of the database at the worst moment
(tests/server/store_locks.py), so the interleaving is certain.
"""
from __future__ import annotations

import asyncio
import time

import pytest

from . import stripe_events as se
from .personal_store import rows
from .store_locks import writes_held
from .test_webhook import deliver, q, status_of

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
async def hook(start_gate):
    return await start_gate(STRIPE_WEBHOOK_SECRET=se.SECRET)


async def test_an_event_whose_lookup_misses_a_link_committed_meanwhile_is_not_stranded(start_gate, pg_dsn):
    """The invoice looks for its subject before the checkout's link commits, and its own record commits only
    after the link's look for waiting events (another connection holds the payments table, which of the two
    writes only the invoice's touches): it must still be applied, not wait for ever."""
    hook = await start_gate(STRIPE_WEBHOOK_SECRET=se.SECRET, database=pg_dsn)
    now = time.time()
    async with writes_held(pg_dsn, "LOCK TABLE payments IN EXCLUSIVE MODE") as queued:
        paid = asyncio.ensure_future(deliver(hook, se.event("invoice.paid", se.invoice("paid"), now - 10)))
        await queued()                  # the invoice found no subject; its record waits
        status, answer = await deliver(hook, se.event("checkout.session.completed", se.checkout("alice"), now - 20))
        assert (status, answer["status"]) == (200, "paid_trial")     # the invoice is not recorded yet
        assert not paid.done()
    status, answer = await paid
    assert status == 200 and answer["duplicate"] is False

    assert await status_of(hook, "alice") == "paid"
    assert await rows(pg_dsn, "SELECT type, outcome, subject FROM subscription_events ORDER BY created") == \
        [("checkout.session.completed", "applied", "alice"), ("invoice.paid", "applied", "alice")]
    assert await rows(pg_dsn, "SELECT from_status, to_status FROM transitions ORDER BY id") == \
        [("limited_free_trial", "paid_trial"), ("paid_trial", "paid")]


async def test_two_links_adopting_one_waiting_event_at_once_apply_it_once(start_gate, each_database):
    """Two linking events (the checkout and the subscription) both find the same waiting invoice before either
    commits (another connection holds the subscriptions' writes meanwhile): it is folded in once, and keeps the
    outcome of that fold."""
    hook = await start_gate(STRIPE_WEBHOOK_SECRET=se.SECRET, database=each_database)
    now = time.time()
    _, answer = await deliver(hook, se.event("invoice.paid", se.invoice("paid"), now - 10))
    assert answer["outcome"] == "pending"
    async with writes_held(each_database, "LOCK TABLE subscriptions IN EXCLUSIVE MODE") as queued:
        both = asyncio.gather(
            deliver(hook, se.event("checkout.session.completed", se.checkout("alice"), now - 30)),
            deliver(hook, se.event("customer.subscription.created", se.subscription("trialing", "alice"), now - 20)))
        await queued()                  # a commit waits (on PostgreSQL both may go in one transaction, or the
        await asyncio.sleep(0.3)        # second waits for it to end): the other's reads take milliseconds
    answers = await both
    assert all(status == 200 for status, _ in answers)

    assert await status_of(hook, "alice") == "paid"
    assert await rows(each_database, "SELECT type, outcome FROM subscription_events ORDER BY created") == \
        [("checkout.session.completed", "applied"), ("customer.subscription.created", "noop"),
         ("invoice.paid", "applied")]
    assert await rows(each_database, "SELECT from_status, to_status FROM transitions ORDER BY id") == \
        [("limited_free_trial", "paid_trial"), ("paid_trial", "paid")]


async def test_a_payment_that_waited_for_its_link_gets_its_subject(hook):
    now = time.time()
    await deliver(hook, se.event("invoice.paid", se.invoice("paid", inv_id="in_early"), now - 10))
    assert q(hook.database, "SELECT invoice_id, subject FROM payments") == [("in_early", None)]
    await deliver(hook, se.event("checkout.session.completed", se.checkout("alice"), now - 20))
    assert await status_of(hook, "alice") == "paid"
    assert q(hook.database, "SELECT invoice_id, subject, status, amount FROM payments") == \
        [("in_early", "alice", "paid", 2000)]
