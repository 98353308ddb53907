"""The cleanup job against the windows still counting: usage of a window that began long ago but has not ended."""
from __future__ import annotations

import time

import pytest

from plangate.server.http.api import GATE

from .conftest import PLAN
from . import stripe_events as se
from .test_entitlements import database  # noqa: F401
from .test_webhook import deliver, status_of

DAY = 86400.0


@pytest.fixture
def period_plan(tmp_path):
    path = tmp_path / "period-plans.yaml"
    text = PLAN.read_text(encoding="utf-8")
    quota = "requests: {limit: 5000, per: month, anchor: billing}"
    assert quota in text
    path.write_text(text.replace(quota, "requests: {limit: 5, per: billing_period}"), encoding="utf-8")
    return path


async def test_cleanup_keeps_the_usage_of_a_billing_period_still_running(start_gate, database, period_plan):
    """A three-year subscription (Stripe bills up to every three years), in its second year: its window began
    more than PLANGATE_USAGE_RETENTION_DAYS (400) ago and ends in months. The cleanup dropped its usage as of a
    window long past, and the subscriber who had used the whole allowance got it afresh (and a capped overage
    could bill its cap again). A window is past once a newer one of the meter began."""
    gate = await start_gate(plan=period_plan, database=database, STRIPE_WEBHOOK_SECRET=se.SECRET,
                            PLANGATE_CACHE_TTL="0")     # each check reads the store
    now = time.time()
    sub = se.subscription("active", "vera", start=now - 500 * DAY, end=now + 595 * DAY)
    await deliver(gate, se.event("customer.subscription.created", sub, now - 500 * DAY))
    assert await status_of(gate, "vera") == "paid"
    for n in range(5):
        status, body = await gate.post("/v1/consume", {"subject": "vera", "meter": "requests", "amount": 1,
                                                       "idempotency_key": f"k{n}"})
        assert status == 200 and body["allowed"], body
    assert not (await gate.check("vera"))[1]["allowed"]
    # walt counted in a day 500 days ago, and today: that day is long past, and dropped.
    core = gate.app[GATE]
    real = core.clock
    core.clock = lambda: real() - 500 * DAY
    assert (await gate.consume("walt", key="w1"))[1]["allowed"]
    core.clock = real
    assert (await gate.consume("walt", key="w2"))[1]["allowed"]
    status, body = await gate.post("/v1/jobs/cleanup")
    assert status == 200, body
    _, decision = await gate.check("vera")
    assert not decision["allowed"] and decision["used"] == 5, decision
    assert body["result"][0] == 1, body         # walt's day 500 days ago, alone


async def test_cleanup_keeps_the_running_billing_period_after_a_shorter_window_of_another_status(
        start_gate, database, period_plan):
    """vera, 500 days into a three-year period, has used her whole allowance (5 a billing_period). Stripe gives up
    on an invoice (unpaid: billing_problem, 5 a day) and she counts 1 there, in today's day window; she pays and is
    back in `paid`, in the same period. That day window is newer than her period's, which the cleanup took for
    past and dropped: she got her allowance afresh (found by a reviewer). The window of a subject's current billing
    period is kept too."""
    gate = await start_gate(plan=period_plan, database=database, STRIPE_WEBHOOK_SECRET=se.SECRET,
                            PLANGATE_CACHE_TTL="0")
    now = time.time()
    start, end = now - 500 * DAY, now + 595 * DAY
    await deliver(gate, se.event("customer.subscription.created", se.subscription("active", "vera", start=start,
                                                                                   end=end), start))
    for n in range(5):
        status, body = await gate.consume("vera", key=f"k{n}")
        assert status == 200 and body["allowed"], body
    unpaid = se.event("customer.subscription.updated", se.subscription("unpaid", "vera", start=start, end=end),
                      now - 2 * DAY)
    unpaid["data"]["previous_attributes"] = {"status": "active"}
    await deliver(gate, unpaid)
    assert await status_of(gate, "vera") == "billing_problem"
    status, body = await gate.consume("vera", key="in-trouble")
    assert status == 200 and body["allowed"], body
    active = se.event("customer.subscription.updated", se.subscription("active", "vera", start=start, end=end),
                      now - DAY)
    active["data"]["previous_attributes"] = {"status": "unpaid"}
    await deliver(gate, active)
    assert await status_of(gate, "vera") == "paid"
    status, body = await gate.post("/v1/jobs/cleanup")
    assert status == 200, body
    _, decision = await gate.check("vera")
    assert not decision["allowed"] and decision["used"] == 5, (decision, body)
