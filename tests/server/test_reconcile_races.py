"""Reconciliation racing the webhook: Stripe answers, then its state moves on and the event telling so is
delivered while the reconciliation still decides."""
from __future__ import annotations

import time

import pytest
from aiohttp import web

from plangate.server.http.api import GATE

from . import stripe_events as se
from .stripe_meters import KEY, FakeStripe
from .test_entitlements import database  # noqa: F401
from .test_webhook import deliver, status_of

DAY = 86400.0


class AnsweringThenMovingOn(FakeStripe):
    """Answers a subscription as it is, then runs `after_answer` (Stripe's state moves on, its webhook is sent)
    before the answer reaches the gate."""

    after_answer = None

    async def subscription(self, request: web.Request) -> web.Response:
        answer = await super().subscription(request)
        if self.after_answer is not None:
            hook, self.after_answer = self.after_answer, None
            await hook()
        return answer


@pytest.fixture
async def fake(aiohttp_server):
    fake = AnsweringThenMovingOn()
    server = await aiohttp_server(fake.app(), host="127.0.0.1")
    fake.url = str(server.make_url("")).rstrip("/")
    return fake


@pytest.mark.parametrize("newer", ["active", "canceled"])
async def test_a_stripe_answer_older_than_an_event_in_its_second_does_not_undo_the_event(start_gate, database,
                                                                                        fake, newer):
    """rita, in grace, pays: Stripe answered the reconciliation `past_due` a moment before, and the event of the
    payment, created in the second the run began (Stripe dates events in whole seconds), is folded while the run
    still decides. The answer was dated when the run began, after that event: the fold put the stale `past_due`
    over the payment, and rita went back to grace until the next run. (A cancellation held: an ended
    subscription's later update moves nothing.)"""
    gate = await start_gate(database=database, STRIPE_WEBHOOK_SECRET=se.SECRET, STRIPE_SECRET_KEY=KEY,
                            STRIPE_API_BASE=fake.url)
    now = time.time()
    await deliver(gate, se.event("customer.subscription.created", se.subscription("active", "rita"), now - 6 * DAY))
    failed = se.event("customer.subscription.updated", se.subscription("past_due", "rita"), now - DAY)
    failed["data"]["previous_attributes"] = {"status": "active"}
    await deliver(gate, failed)
    assert await status_of(gate, "rita") == "grace_period"
    fake.subscriptions["sub_1"] = se.subscription("past_due", "rita")
    core = gate.app[GATE]
    second = int(time.time()) + 2
    core.clock = lambda: second + 0.4        # the run starts 0.4 s into a second

    async def moved_on():
        # Stripe's subscription moves on just after it answered (0.6 s later, in the same second): its event says
        # so, created in that second (Stripe's `created` is whole seconds).
        fake.subscriptions["sub_1"] = se.subscription(newer, "rita")
        evt = se.event("customer.subscription.deleted" if newer == "canceled" else "customer.subscription.updated",
                       se.subscription(newer, "rita"), second)
        evt["data"]["previous_attributes"] = {"status": "past_due"}
        status, body = await deliver(gate, evt)
        assert status == 200 and body["outcome"] == "applied", body

    fake.after_answer = moved_on
    status, body = await gate.post("/v1/jobs/reconcile")
    assert status == 200, body
    expected = {"active": "paid", "canceled": "canceled"}[newer]
    assert await status_of(gate, "rita") == expected
