"""Several Stripe subscriptions per subject, through a real gate on each store (a SQLite file, a real PostgreSQL):
which one the status follows, and what another one's events do, in any order of delivery.

The plan is tests/plans/several-subscriptions.yaml, with or without its `subscription: other` transition.
"""
from __future__ import annotations

import random
import time

import pytest

from plangate.server.http.api import GATE

from . import stripe_events as se
from .stripe_lifecycles import DAY, HOUR, Life, invoice, resubscribe_during_dunning
from .test_webhook import deliver

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
QUIET = {"STRIPE_WEBHOOK_SECRET": se.SECRET, "PLANGATE_SWEEP_SCHEDULE": "0 0 1 1 *",
         "PLANGATE_RECONCILE_SCHEDULE": "0 0 1 1 *", "PLANGATE_CLEANUP_SCHEDULE": "0 0 1 1 *"}


def plan_file(tmp_path, addon_switch: bool):
    from tests.engine.test_engine_subscriptions import plan_text
    path = tmp_path / ("with-switch.yaml" if addon_switch else "without-switch.yaml")
    path.write_text(plan_text(addon_switch), encoding="utf-8")
    return path


@pytest.fixture
def start(start_gate, tmp_path, each_database):
    """start(addon_switch=False) -> a gate on the test plan over a store of each kind."""
    database = each_database

    async def run(addon_switch: bool = False, **env):
        return await start_gate(plan=plan_file(tmp_path, addon_switch), database=database, **{**QUIET, **env})
    return run


async def view(gate, subject: str) -> dict:
    status, body = await gate.get(f"/v1/subjects/{subject}")
    assert status == 200
    return body


async def outcomes(gate, subject: str) -> dict[str, tuple[str, str]]:
    """Each of the subject's stored events: id -> (type, outcome)."""
    rows = await gate.app[GATE].store.events(subject, limit=500)
    return {r.id: (r.type, r.outcome) for r in rows}


async def others(gate, subject: str) -> set[str]:
    """The events recorded as another subscription's, by their place in the lifecycle (ids end in it)."""
    return {ident.rsplit("_", 1)[1] for ident, (_, outcome) in (await outcomes(gate, subject)).items()
            if outcome == "other_subscription"}


async def play(gate, events: list[dict]) -> list[dict]:
    answers = []
    for evt in events:
        status, answer = await deliver(gate, evt)
        assert status == 200, answer
        answers.append(answer)
    return answers


class TestResubscribeDuringDunning:
    async def test_the_old_subscriptions_end_leaves_the_subject_on_the_new_ones_status(self, start):
        gate = await start()
        life = resubscribe_during_dunning(1, time.time() - 60 * DAY)
        answers = await play(gate, life.events)
        by_id = {evt["id"]: (evt["type"], a["outcome"], a["status"]) for evt, a in zip(life.events, answers)}
        body = await view(gate, "user1")
        assert body["status"] == "paid" and body["stripe_subscription"] == "sub_B1"
        assert [(s["id"], s["status"], s["followed"], s["tier"]) for s in body["subscriptions"]] == \
            [("sub_A1", "canceled", False, "pro"), ("sub_B1", "active", True, "pro")]
        ended = [s["ended_at"] for s in body["subscriptions"]]
        assert ended[0] is not None and ended[1] is None
        # What A's events did once B was followed: recorded, the subject not moved.
        a_late = [v for k, v in by_id.items() if v[0] in ("invoice.payment_failed", "customer.subscription.deleted")
                  and life.events[[e["id"] for e in life.events].index(k)]["created"] > life.start + 31 * DAY]
        assert a_late and all(outcome == "other_subscription" and status == "paid" for _, outcome, status in a_late)
        stored = await outcomes(gate, "user1")
        assert {outcome for type_, outcome in stored.values() if type_ == "customer.subscription.deleted"} == \
            {"other_subscription"}
        history = [(t["from"], t["to"]) for t in body["transitions"]][::-1]
        assert history == [("free", "paid"), ("paid", "grace"), ("grace", "paid")]

    async def test_every_order_of_delivery_with_duplicates_ends_the_same(self, start):
        gate = await start()
        start_at = time.time() - 60 * DAY
        reference = resubscribe_during_dunning(0, start_at)
        await play(gate, reference.events)
        expected = await view(gate, "user0")
        # Which events moved nothing for being another subscription's: the same whatever the order (whether an
        # event is `stale` or `noop` depends on what came before it, by design).
        expected_others = await others(gate, "user0")
        assert len(expected_others) == 3      # A's two failed retries and its end
        shuffle = random.Random(14)
        for n in range(1, 5):
            life = resubscribe_during_dunning(n, start_at)
            events = life.events + shuffle.sample(life.events, 6)      # Stripe delivers some twice
            shuffle.shuffle(events)
            await play(gate, events)
            body = await view(gate, f"user{n}")
            assert body["status"] == expected["status"] == "paid", n
            assert [(s["followed"], s["status"]) for s in body["subscriptions"]] == \
                [(s["followed"], s["status"]) for s in expected["subscriptions"]], n
            assert await others(gate, f"user{n}") == expected_others, n

    async def test_when_the_followed_one_ends_the_other_live_one_is_followed(self, start):
        gate = await start()
        life = resubscribe_during_dunning(7, time.time() - 60 * DAY)
        renewal = life.start + 30 * DAY
        events = [e for e in life.events if e["created"] <= renewal + DAY]       # A past_due, B active
        life.events = events
        life.status("B", "canceled", renewal + 2 * DAY, (renewal + DAY, renewal + 31 * DAY), renewal + DAY)
        answers = await play(gate, life.events)
        assert answers[-1]["outcome"] == "other_subscription" and answers[-1]["status"] == "paid"
        body = await view(gate, "user7")
        assert [(s["id"], s["followed"]) for s in body["subscriptions"]] == [("sub_A7", True), ("sub_B7", False)]
        # A's own end is the subject's end.
        life.status("A", "canceled", renewal + 15 * DAY, (renewal, renewal + 30 * DAY), life.start)
        (answer,) = await play(gate, life.events[-1:])
        assert (answer["outcome"], answer["status"]) == ("applied", "canceled")


class TestOneOffInvoice:
    async def test_its_failure_and_payment_are_recorded_and_move_no_subscriber(self, start):
        # A one-off invoice (`parent: null`, billing_reason manual: say, an extra service billed once) fails,
        # then is paid: the subscription is paid up all along, the subject stays paid.
        gate = await start()
        life = Life(11, "user11", time.time() - 10 * DAY)
        life.subscribe("A", life.start)
        at, period = life.start + 2 * DAY, (life.start + 2 * DAY, life.start + 2 * DAY)
        for status, type_ in (("open", "invoice.payment_failed"), ("paid", "invoice.paid")):
            life.add(type_, invoice("in_once11", status, subscription="", customer=life.customer, period=period,
                                    reason="manual", amount=5000, parent=None), at)
            at += HOUR
        answers = await play(gate, life.events)
        assert [(a["outcome"], a["status"]) for a in answers[-2:]] == [("other_subscription", "paid")] * 2
        body = await view(gate, "user11")
        assert body["status"] == "paid" and body["period_end"] is not None
        assert body["period_end"] == body["subscriptions"][0]["current_period_end"]


class TestPriceNoTierLists:
    async def test_a_resubscription_on_it_is_followed_as_the_default_tier(self, start):
        # A promotion's price, not (yet) in plans.yaml, after the old subscription ended: the plan says such a
        # price gets default_tier; it used to be taken for an add-on, the ended subscription stayed followed and
        # the paying customer's events were all another subscription's.
        gate = await start()
        life = Life(9, "user9", time.time() - 90 * DAY)
        life.subscribe("A", life.start)
        end = life.start + 30 * DAY
        life.status("A", "canceled", end, (life.start, end), life.start, canceled_at=int(end), ended_at=int(end))
        life.subscribe("B", time.time() - 8 * DAY, price="price_pro_promo")
        answers = await play(gate, life.events)
        assert answers[-1]["status"] == "paid"
        body = await view(gate, "user9")
        assert (body["status"], body["tier"], body["stripe_subscription"]) == ("paid", "pro", "sub_B9")
        assert [(s["id"], s["tier"], s["followed"]) for s in body["subscriptions"]] == \
            [("sub_A9", "pro", False), ("sub_B9", "pro", True)]
        assert not await others(gate, "user9")


class TestAddOn:
    def life(self, n: int) -> Life:
        life = Life(n, f"user{n}", time.time() - 20 * DAY)
        life.subscribe("A", life.start)
        life.subscribe("C", life.start + DAY, price="price_addon", checkout=False)
        end = life.start + 9 * DAY
        life.status("C", "canceled", end, (life.start + DAY, life.start + 31 * DAY), life.start + DAY,
                    price="price_addon", ended_at=int(end), canceled_at=int(end))
        return life

    async def test_with_the_switch_the_add_ons_end_moves_the_subject(self, start):
        gate = await start(addon_switch=True)
        answers = await play(gate, self.life(2).events)
        assert (answers[-1]["outcome"], answers[-1]["status"]) == ("applied", "without_addon")
        body = await view(gate, "user2")
        assert [(s["id"], s["tier"], s["followed"]) for s in body["subscriptions"]] == \
            [("sub_A2", "pro", True), ("sub_C2", None, False)]
        assert "(about sub_C2; the subject follows sub_A2)" in body["transitions"][0]["reason"]

    async def test_an_erasure_keeps_the_stripe_ids_while_an_add_on_lives_on(self, start):
        """The plan's subscription ended, an add-on's lives on: the erasure keeps the Stripe ids (it dropped them,
        looking at the followed subscription alone), so that the add-on's next events still land on the
        pseudonym instead of waiting, unlinkable, with the person's data in them."""
        gate = await start()
        life = Life(4, "user4", time.time() - 20 * DAY)
        life.subscribe("A", life.start)
        life.subscribe("C", life.start + DAY, price="price_addon", checkout=False)
        end = life.start + 9 * DAY
        life.status("A", "canceled", end, (life.start, life.start + 30 * DAY), life.start, ended_at=int(end),
                    canceled_at=int(end))
        await play(gate, life.events)
        assert (await view(gate, "user4"))["status"] == "canceled"
        status, erased = await gate.post("/v1/subjects/user4/erase", {})
        assert status == 200 and erased["stripe_ids_kept"] is True, erased
        renewal = life.start + 31 * DAY
        life.events.clear()
        life.status("C", "active", renewal, (renewal, renewal + 30 * DAY), life.start + DAY, price="price_addon")
        (answer,) = await play(gate, life.events)
        assert answer["subject"] == erased["pseudonym"], answer

    async def test_without_it_the_add_ons_end_is_recorded_and_moves_nothing(self, start):
        gate = await start(addon_switch=False)
        answers = await play(gate, self.life(3).events)
        assert (answers[-1]["outcome"], answers[-1]["status"]) == ("other_subscription", "paid")
        # The add-on's own paid invoice is recorded as another subscription's too, and its period is not the
        # subject's.
        body = await view(gate, "user3")
        assert body["stripe_subscription"] == "sub_A3"
        assert body["period_start"] == body["subscriptions"][0]["current_period_start"]

