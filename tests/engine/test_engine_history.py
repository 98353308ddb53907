"""The fold's order within one second: updates of one subscription that tie in `created` go by the chain of their
previous_attributes.status, from the status the subscription had before them, whatever their (unordered) ids."""
from __future__ import annotations

import itertools

import pytest

from plangate.engine import StripeEvent, replay, tie_group

T0 = 1_800_000_000.0
RESUME = T0 + 12 * 86400


def sub(status: str, ident: str = "sub_1") -> dict:
    return {"id": ident, "object": "subscription", "status": status, "customer": "cus_1", "created": int(T0),
            "items": {"object": "list", "data": [{"id": "si_1", "price": {"id": "price_pro_monthly"},
                                                  "current_period_start": int(T0),
                                                  "current_period_end": int(T0 + 30 * 86400)}]}}


def update(ident: str, status: str, was: str | None, at: float = RESUME, sub_id: str = "sub_1") -> StripeEvent:
    return StripeEvent("customer.subscription.updated", sub(status, sub_id), ident, at,
                       {"status": was} if was is not None else {"latest_invoice": "in_0"})


def before(status: str) -> list[StripeEvent]:
    """A trial, paused at its end, or paid; the subscription's last known status is `status`."""
    events = [StripeEvent("customer.subscription.created", sub("trialing"), "evt_a", T0)]
    if status == "paused":
        events.append(update("evt_b", "paused", "trialing", T0 + 7 * 86400))
    else:
        events += [StripeEvent("invoice.paid", {"id": "in_1", "object": "invoice", "status": "paid",
                                                "amount_paid": 2000, "billing_reason": "subscription_cycle",
                                                "customer": "cus_1", "subscription": "sub_1"}, "evt_b", T0 + 7 * 86400),
                   update("evt_c", status, "trialing", T0 + 7 * 86400)]
    return events


def statuses(shipped, events: list[StripeEvent]) -> list[str]:
    _, steps = replay(shipped, shipped.initial_state("u", T0 - 60), events)
    return [s.outcome.state.status for s in steps if s.event.created == RESUME]


@pytest.mark.parametrize("ids", [("evt_x1", "evt_x2"), ("evt_x2", "evt_x1")], ids=["resumption first", "decline first"])
def test_a_resumption_declined_at_once_folds_resumed_then_declined_whatever_the_ids(shipped, ids):
    resumed, declined = update(ids[0], "active", "paused"), update(ids[1], "past_due", "active")
    for events in ([resumed, declined], [declined, resumed]):
        assert statuses(shipped, before("paused") + events) == ["paid", "grace_period"]


@pytest.mark.parametrize("ids", [("evt_x1", "evt_x2"), ("evt_x2", "evt_x1")])
def test_a_chain_back_to_where_it_began_starts_from_the_status_before_it(shipped, ids):
    """active -> past_due -> active: each update's previous status is the other's new one; the status before
    them (active) says which was first."""
    declined, recovered = update(ids[0], "past_due", "active"), update(ids[1], "active", "past_due")
    assert statuses(shipped, before("active") + [recovered, declined]) == ["grace_period", "paid"]


@pytest.mark.parametrize("first, second", [
    (update("evt_x1", "past_due", None), update("evt_x2", "active", None)),            # no status changed, said
    (update("evt_x1", "past_due", "paused"), update("evt_x2", "active", "paused")),    # both fit: ambiguous
    (update("evt_x1", "past_due", "unpaid"), update("evt_x2", "active", "canceled")),  # neither fits
])
def test_where_no_chain_decides_the_ids_do(shipped, first, second):
    # (the active update is no payment after a failure whose previous status is not one: billing_problem stays)
    assert statuses(shipped, before("paused") + [second, first]) == ["billing_problem", "billing_problem"]


def test_updates_of_other_subscriptions_or_seconds_are_no_tie():
    assert tie_group(update("evt_1", "active", "paused")) == (RESUME, "sub_1")
    assert tie_group(update("evt_1", "active", "paused", sub_id="sub_2")) != tie_group(update("evt_2", "past_due", "active"))
    assert tie_group(update("evt_1", "active", "paused", at=RESUME + 1)) != tie_group(update("evt_2", "past_due", "active"))
    assert tie_group(StripeEvent("customer.subscription.resumed", sub("active"), "evt_3", RESUME)) is None


# Chains of three and four updates, with the subject's status after each under the shipped plan. Where two updates
# of a chain make the same change (active -> past_due twice), which of them goes first changes nothing.
CHAINS = {
    "resumed, declined, paid": (["paused", "active", "past_due", "active"], ["paid", "grace_period", "paid"]),
    "resumed, paused, resumed": (["paused", "active", "paused", "active"], ["paid", "paused", "paid"]),
    "resumed, paused, resumed, paused: back to the start": (
        ["paused", "active", "paused", "active", "paused"], ["paid", "paused", "paid", "paused"]),
    "declined, paid, declined, paid: back to the start": (
        ["active", "past_due", "active", "past_due", "active"], ["grace_period", "paid", "grace_period", "paid"]),
    "resumed, declined, unpaid, paid": (
        ["paused", "active", "past_due", "unpaid", "active"], ["paid", "grace_period", "billing_problem", "paid"]),
}


@pytest.mark.parametrize("chain", CHAINS, ids=list(CHAINS))
def test_a_chain_of_three_or_four_updates_folds_in_its_order_whatever_the_ids(shipped, chain):
    """At each step the fold takes, of all the group's updates still left, one whose previous status is the
    subscription's status then, not only when it starts the group: every numbering of the ids folds the chain."""
    walk, subject = CHAINS[chain]
    for ids in itertools.permutations([f"evt_x{n}" for n in range(1, len(walk))]):
        updates = [update(ident, to, was) for ident, was, to in zip(ids, walk, walk[1:])]
        for delivered in (updates, updates[::-1]):
            _, steps = replay(shipped, shipped.initial_state("u", T0 - 60), before(walk[0]) + delivered)
            tied = [s for s in steps if s.event.created == RESUME]
            assert [(s.event.previous_status, s.event.object["status"]) for s in tied] == \
                list(zip(walk, walk[1:])), ids
            assert [s.outcome.state.status for s in tied] == subject, ids
