"""Updates of one subscription that tie in `created`, through a real gate on each store (a SQLite file, a real
PostgreSQL): folded in the order their previous_attributes.status chain says, whatever their ids and whatever
order they are delivered in.

The lifecycle is the corpus's trial-paused-resume-declined: a paused trial resumes (paused -> active) and its
resumption charge is declined (active -> past_due) within one second. Stripe's event ids are not ordered, so the
test plays it with the two updates' ids as Stripe numbered them and swapped.
"""
from __future__ import annotations

import random
import time

import pytest

from plangate.lifecycles import load
from plangate.server.http import api

from . import stripe_events as se
from .conftest import ROOT
from .stripe_lifecycles import DAY, subscription
from .test_entitlements import database  # noqa: F401
from .test_lifecycles import _Clock, _deliver

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
LIFE = load(ROOT / "scenarios" / "lifecycles" / "trial-paused-resume-declined")
RESUMED = next(i for i, e in enumerate(LIFE.events) if e["type"] == "customer.subscription.updated"
               and e["data"].get("previous_attributes", {}).get("status") == "paused")
DECLINED = next(i for i, e in enumerate(LIFE.events) if e["type"] == "customer.subscription.updated"
                and e["data"].get("previous_attributes", {}).get("status") == "active" and i > RESUMED)


def test_the_lifecycle_ties_the_resumption_and_the_decline():
    assert LIFE.ends == {"status": "grace_period"}
    resumed, declined = LIFE.events[RESUMED], LIFE.events[DECLINED]
    assert resumed["created"] == declined["created"]
    assert (resumed["data"]["object"]["status"], declined["data"]["object"]["status"]) == ("active", "past_due")
    assert resumed["id"] < declined["id"]       # as built; the tests swap them as well


def _ids_swapped(events: list[dict]) -> list[dict]:
    events = [dict(e) for e in events]
    events[RESUMED]["id"], events[DECLINED]["id"] = events[DECLINED]["id"], events[RESUMED]["id"]
    return events


def _in_order(events: list[dict]) -> list[dict]:
    return events


def _decline_first(events: list[dict]) -> list[dict]:
    """The past_due update delivered just before the resumption's."""
    order = list(range(len(events)))
    order.remove(DECLINED)
    order.insert(order.index(RESUMED), DECLINED)
    return [events[i] for i in order]


def _resumption_last(events: list[dict]) -> list[dict]:
    """The resumption's update delivered after everything else, the past_due update folded long before it."""
    return [e for i, e in enumerate(events) if i != RESUMED] + [events[RESUMED]]


def _second_begun_after_the_tie(events: list[dict]) -> list[dict]:
    """The updates and the resumption folded first (chained against their ids when swapped); the events of the same
    second that come before them in the fold (the invoice, the declined charge) arrive after: the fold runs again
    from before them, and takes the tie group in the order it took before."""
    second = events[RESUMED]["created"]
    before = [e for e in events if e["created"] < second]
    tie = [e for e in events if e["created"] == second and e["type"].startswith("customer.subscription.")]
    return before + tie + [e for e in events if e not in before and e not in tie]


def _backwards(events: list[dict]) -> list[dict]:
    return events[::-1]


def _shuffled_with_repeats(seed: int):
    def deliveries(events: list[dict]) -> list[dict]:
        rng = random.Random(f"ties-{seed}")
        out = list(events) + rng.sample(list(events), k=len(events) // 4) + [events[RESUMED], events[DECLINED]]
        rng.shuffle(out)
        return out
    deliveries.__name__ = f"shuffled_{seed}"
    return deliveries


ORDERS = [_in_order, _decline_first, _resumption_last, _second_begun_after_the_tie, _backwards, *map(_shuffled_with_repeats, range(4))]


@pytest.mark.parametrize("swapped", [False, True], ids=["ids-as-built", "ids-swapped"])
@pytest.mark.parametrize("order", ORDERS, ids=lambda f: f.__name__.strip("_"))
async def test_a_resumption_declined_in_the_same_second_goes_to_grace_then_billing_problem(
        database, start_gate, swapped, order):
    events = _ids_swapped(list(LIFE.events)) if swapped else list(LIFE.events)
    gate = await start_gate(database=database, STRIPE_WEBHOOK_SECRET=se.SECRET)
    clock = _Clock(LIFE.events[0]["created"])
    gate.app[api.GATE].clock = clock
    for event in order(events):
        clock.now = max(clock.now, event["created"] + 2)
        await _deliver(gate, event)
    # paused -> paid (resumed) -> grace_period (declined): never paid with a past_due subscription.
    for at, status in ((LIFE.ends_at, "grace_period"), (LIFE.events[RESUMED]["created"] + 4 * DAY, "billing_problem")):
        clock.now = at
        assert (await gate.post("/v1/jobs/sweep"))[0] == 200
        _, view = await gate.get(f"/v1/subjects/{LIFE.subject}")
        assert view["status"] == status, view["transitions"]


async def test_a_late_update_of_another_subscription_refolds_a_tie_group_whole(database, start_gate):
    """Updates of subscription A tie in one second; an update of B in that second, whose id falls between A's,
    arrives after them. The fold runs again from before all of A's updates, not from the middle of them: each
    keeps its place in the group (fold_rank), so that a later refold still starts before the first of them."""
    gate = await start_gate(database=database, STRIPE_WEBHOOK_SECRET=se.SECRET)
    start = int(time.time() - 10 * DAY)
    tie, period = start + DAY, (start, start + 30 * DAY)

    def update(sub: str, ident: str, status: str, was: str) -> dict:
        evt = se.event("customer.subscription.updated", subscription(
            sub, status, customer="cus_1", created=start, period=period, subject="tia"), tie, ident)
        evt["data"]["previous_attributes"] = {"status": was}
        return evt

    chain = [update("sub_A", "evt_t1", "past_due", "active"), update("sub_A", "evt_t2", "unpaid", "past_due"),
             update("sub_A", "evt_t4", "active", "unpaid")]
    other = update("sub_B", "evt_t3", "past_due", "active")
    created = [se.event("customer.subscription.created", subscription(
        sub, "active", customer="cus_1", created=start, period=period, subject="tia"), start, f"evt_c{sub}")
        for sub in ("sub_A", "sub_B")]
    for event in created + chain + [other]:
        await _deliver(gate, event)
    rows = await gate.app[api.GATE].store.history("tia", tie)
    assert {r.id: r.fold_rank for r in rows if r.id in {e["id"] for e in chain}} == \
        {"evt_t1": 0, "evt_t2": 1, "evt_t4": 2}


def _three_updates() -> tuple[list[dict], list[dict]]:
    """A subscription active since ten days ago, and three updates of it in one second: active -> past_due ->
    active -> past_due. The middle one (past_due -> active) has the lowest id; the other two make the same change,
    so the chain's first is the lower of them."""
    start = int(time.time() - 10 * DAY)
    tie, period = int(time.time() - 60), (start, start + 30 * DAY)

    def update(ident: str, status: str, was: str) -> dict:
        evt = se.event("customer.subscription.updated", subscription(
            "sub_A", status, customer="cus_1", created=start, period=period, subject="tri"), tie, ident)
        evt["data"]["previous_attributes"] = {"status": was}
        return evt

    created = se.event("customer.subscription.created", subscription(
        "sub_A", "active", customer="cus_1", created=start, period=period, subject="tri"), start, "evt_c")
    chain = [update("evt_t2", "past_due", "active"), update("evt_t1", "active", "past_due"),
             update("evt_t3", "past_due", "active")]
    return [created], chain


@pytest.mark.parametrize("delivery", [[0, 1, 2], [1, 0, 2], [2, 1, 0], [1, 2, 0]],
                         ids=lambda d: "-".join(f"t{i}" for i in d))
async def test_three_tied_updates_keep_their_chain_and_ranks_whatever_the_delivery(database, start_gate, delivery):
    """However the three updates arrive (each arrival after the first folding the group again, whole), the stored
    ranks are the chain's order and each update was folded on the subscription status its previous status says."""
    gate = await start_gate(database=database, STRIPE_WEBHOOK_SECRET=se.SECRET)
    created, chain = _three_updates()
    for event in created + [chain[i] for i in delivery]:
        await _deliver(gate, event)
    rows = {r.id: r for r in await gate.app[api.GATE].store.history("tri", chain[0]["created"])}
    assert {ident: rows[ident].fold_rank for ident in ("evt_t1", "evt_t2", "evt_t3")} == \
        {"evt_t2": 0, "evt_t1": 1, "evt_t3": 2}
    for ident, was in (("evt_t2", "active"), ("evt_t1", "past_due"), ("evt_t3", "active")):
        assert [s.status for s in rows[ident].state_before.subscriptions] == [was], ident
    _, view = await gate.get("/v1/subjects/tri")
    assert view["status"] == "grace_period", view["transitions"]
