"""An invoice paid after its subscription ended, through a real gate on each store (a SQLite file, a real
PostgreSQL): recorded `ended_subscription`, it does not bring the customer back, in any order of delivery.

The plan is tests/plans/ended-subscription.yaml (`suspended` is entered by grace running out and by the
subscription's end, and left by a payment), with or without its `subscription: ended` transition.
"""
from __future__ import annotations

import random
import time

import pytest

from plangate.server.http.api import GATE

from .conftest import TOKEN
from .console_flow import login, new_session
from .stripe_lifecycles import DAY, HOUR, Life
from .test_webhook_subscriptions import QUIET, outcomes, play, view

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def start(start_gate, tmp_path, each_database):
    """start(settled=False) -> a gate on the test plan over a store of each kind."""
    from tests.engine.test_engine_ended_subscription import plan_text
    database = each_database

    async def run(settled: bool = False):
        path = tmp_path / ("settled.yaml" if settled else "plain.yaml")
        path.write_text(plan_text(settled), encoding="utf-8")
        return await start_gate(plan=path, database=database, **QUIET)
    return run


def canceled_then_paid_late(n: int, *, paid_after: float = 4 * DAY) -> Life:
    """A's renewal is declined twice (overdue); Stripe's dunning cancels A; `paid_after` the cancellation the
    customer pays the renewal invoice, left open, on its hosted page."""
    life = Life(n, f"user{n}", time.time() - 50 * DAY)
    life.subscribe("A", life.start)
    renewal = life.start + 30 * DAY
    period = (renewal, renewal + 30 * DAY)
    life.status("A", "active", renewal, period, life.start)
    life.fail("A", f"in_A{n}_2", renewal + HOUR, period, 1)
    life.status("A", "past_due", renewal + HOUR, period, life.start)
    life.fail("A", f"in_A{n}_2", renewal + DAY, period, 2)
    end = renewal + 2 * DAY
    life.status("A", "canceled", end, period, life.start, canceled_at=int(end), ended_at=int(end))
    life.pay_open("A", f"in_A{n}_2", end + paid_after, period, 3)
    return life


def late_payment(life: Life) -> list[dict]:
    return [e for e in life.events if e["data"]["object"].get("id") == f"in_A{life.n}_2"
            and e["type"] in ("invoice.paid", "invoice.payment_succeeded")]


async def ended(gate, subject: str) -> set[str]:
    """The events recorded as an ended subscription's, by their place in the lifecycle (ids end in it)."""
    return {ident.rsplit("_", 1)[1] for ident, (_, outcome) in (await outcomes(gate, subject)).items()
            if outcome == "ended_subscription"}


class TestPaidAfterTheEnd:
    async def test_it_is_recorded_and_the_customer_stays_suspended(self, start):
        gate = await start()
        life = canceled_then_paid_late(1)
        answers = dict(zip((e["id"] for e in life.events), await play(gate, life.events)))
        late = late_payment(life)
        assert [(answers[e["id"]]["outcome"], answers[e["id"]]["status"]) for e in late] == \
            [("ended_subscription", "suspended")] * 2
        payment = next(e for e in life.events if e["type"] == "invoice_payment.paid")
        assert answers[payment["id"]]["outcome"] == "ignored"      # names only its invoice; the plan reads none
        body = await view(gate, "user1")
        assert (body["status"], body["stripe_subscription"]) == ("suspended", "sub_A1")
        assert [(t["from"], t["to"]) for t in body["transitions"]][::-1] == \
            [("free", "paid"), ("paid", "overdue"), ("overdue", "suspended")]
        status, log = await gate.get("/v1/events?outcome=ended_subscription", token=TOKEN)
        assert status == 200 and {e["id"] for e in log["events"]} == {e["id"] for e in late}
        rows = await gate.app[GATE].store.events("user1", limit=500)
        assert all("about subscription sub_A1, which ended on " in r.reason for r in rows
                   if r.outcome == "ended_subscription")
        async with new_session() as session:
            await login(gate.url, session, TOKEN)
            async with session.get(gate.url + "/console/events", params={"outcome": "ended_subscription"}) as r:
                page = await r.text()
        assert r.status == 200 and "invoice.payment_succeeded" in page and "charge.succeeded" not in page

    async def test_the_end_delivered_after_the_payment_folds_it_back(self, start):
        """Stripe's `deleted` comes last: the gate takes the payment for a live subscription's until the end
        arrives; then the fold from before the end records it as an ended subscription's, and the subject is
        suspended again."""
        gate = await start()
        life = canceled_then_paid_late(2)
        deleted = [e for e in life.events if e["type"] == "customer.subscription.deleted"]
        answers = await play(gate, [e for e in life.events if e not in deleted])
        assert answers[-2]["status"] == "paid"
        (answer,) = await play(gate, deleted)
        assert (answer["outcome"], answer["status"]) == ("applied", "suspended")
        stored = await outcomes(gate, "user2")
        assert [stored[e["id"]][1] for e in late_payment(life)] == ["ended_subscription"] * 2
        body = await view(gate, "user2")
        assert body["status"] == "suspended"
        assert "folded again in created order" in body["transitions"][0]["reason"]

    async def test_every_order_of_delivery_with_duplicates_ends_the_same(self, start):
        gate = await start()
        reference = canceled_then_paid_late(10)
        await play(gate, reference.events)
        expected = await ended(gate, "user10")
        assert len(expected) == 2
        shuffle = random.Random(19)
        for n in range(11, 15):
            life = canceled_then_paid_late(n)
            events = life.events + shuffle.sample(life.events, 5)      # Stripe delivers some twice
            shuffle.shuffle(events)
            await play(gate, events)
            assert (await view(gate, f"user{n}"))["status"] == "suspended", n
            assert await ended(gate, f"user{n}") == expected, n

    @pytest.mark.parametrize("reverse", [False, True])
    async def test_paid_in_the_second_it_ends(self, start, reverse):
        """Paid in the very second Stripe cancels: the fold takes the payment first (a subscription's invoice
        before its end, in one second), whichever Stripe delivers first; the end then suspends the subject."""
        gate = await start()
        life = canceled_then_paid_late(3, paid_after=0)
        end = next(e["created"] for e in life.events if e["type"] == "customer.subscription.deleted")
        tied = [e for e in life.events if e["created"] == end]
        rest = [e for e in life.events if e["created"] != end]
        await play(gate, rest + (tied[::-1] if reverse else tied))
        assert (await view(gate, "user3"))["status"] == "suspended" and not await ended(gate, "user3")


class TestSubscriptionEnded:
    async def test_a_transition_for_ended_subscriptions_moves_the_subject(self, start):
        gate = await start(settled=True)
        life = canceled_then_paid_late(4)
        answers = dict(zip((e["id"] for e in life.events), await play(gate, life.events)))
        first, second = late_payment(life)
        assert (answers[first["id"]]["outcome"], answers[first["id"]]["status"]) == ("applied", "settled")
        assert answers[second["id"]]["outcome"] == "ended_subscription"
        assert (await view(gate, "user4"))["status"] == "settled"
        row = next(r for r in await gate.app[GATE].store.events("user4", limit=500) if r.id == first["id"])
        assert "(subscription: ended) (about sub_A4, which ended on " in row.reason
