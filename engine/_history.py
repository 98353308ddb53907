"""A subject's Stripe history as a fold: the same events give the same state, whatever order they came in.

Stripe does not order deliveries, so the state a subject ends in is defined as the fold of its
events sorted by `created` (ties broken by where the event sits in a subscription's life, then by
id), with due timers firing at their deadlines between events. An event that arrives in order is
one step of the fold; one that arrives late makes the fold run again from before it.

Stripe's ids are not ordered: updates of one subscription in one second (a resumption, and its payment
declined at once) are folded along their previous_attributes.status chain, from the status the subscription had
before them. At each step the fold takes, of all the group's updates still left, the first by id whose previous
status is the subscription's status then; where none is (no previous status said, none that fits), the first
left by id. Where two fit, the one with the lower id goes first, whether or not the rest then chain.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ._state import SubjectState
from ._table import StateTable
from ._triggers import Outcome, StripeEvent, TimerFired

# Within one second, the order in which a subscription's life produces these events.
_LIFE_ORDER = {
    "checkout.session.completed": 0,
    "customer.subscription.created": 1,
    "invoice.created": 2,
    "invoice.finalized": 3,
    "invoice.payment_failed": 4,
    "invoice.payment_action_required": 4,
    "invoice.paid": 5,
    "invoice.payment_succeeded": 5,
    "customer.subscription.updated": 6,
    "customer.subscription.deleted": 9,
}
_UPDATED = "customer.subscription.updated"
MAX_TIMER_CHAIN = 32


def event_order(event: StripeEvent) -> tuple:
    return (event.created, _LIFE_ORDER.get(event.type, 7), event.id)


def tie_group(event: StripeEvent) -> tuple[float, str] | None:
    """(created, subscription) of an update: the updates of one subscription in one second, which the fold
    orders by their chain (see the module); None for any other event."""
    if event.type != _UPDATED:
        return None
    ident = event.object.get("id") if isinstance(event.object, Mapping) else None
    return (event.created, ident) if isinstance(ident, str) else None


def refold_from(events: list[StripeEvent], start: int) -> int:
    """Where a fold of events (in fold order) runs again when it must from `start`: back to the first of every
    tie group events[start:] holds, so that a group is folded again whole."""
    while True:
        groups = {tie_group(e) for e in events[start:]} - {None}
        earlier = next((i for i, e in enumerate(events[:start]) if tie_group(e) in groups), start)
        if earlier == start:
            return start
        start = earlier


def _chained(events: list[StripeEvent], i: int, state: SubjectState) -> int:
    """Which of events[i:] to fold at i. If events[i] is an update of a tie group: the first (by id) of all the
    group's updates still to fold whose previous status is the status their subscription has in `state`; if none
    is, or `state` holds no status for the subscription, events[i] itself (the first by id). Any other event:
    events[i]."""
    group = tie_group(events[i])
    if group is None:
        return i
    status = next((s.status for s in state.subscriptions if s.id == group[1]), None)
    if status is None:
        return i
    for k in range(i, len(events)):
        if events[k].created != group[0]:
            break
        if tie_group(events[k]) == group and events[k].previous_status == status:
            return k
    return i


def advance(table: StateTable, state: SubjectState, until: float) -> tuple[SubjectState, list[Outcome]]:
    """Fire every timer due by `until`, each at its own deadline (a chain of timers fires in turn)."""
    steps = []
    for _ in range(MAX_TIMER_CHAIN):
        if state.timer_due is None or state.timer_due > until:
            break
        # A timer anchored to a date already past when its status was entered fires on entry, not before it.
        outcome = table.apply(state, TimerFired(), max(state.timer_due, state.since))
        steps.append(outcome)
        state = outcome.state
    return state, steps


@dataclass(frozen=True)
class Step:
    """One event of a replay: the state just before it (after due timers), and what it did."""

    event: StripeEvent
    before: SubjectState
    timers: tuple[Outcome, ...]
    outcome: Outcome


def replay(table: StateTable, base: SubjectState, events: Iterable[StripeEvent]) -> tuple[SubjectState, list[Step]]:
    """Fold events over base in event_order, but each tie group's updates along their chain (see the module and
    _chained). Each event acts at its own `created` instant."""
    state = base
    steps = []
    ordered = sorted(events, key=event_order)
    for i in range(len(ordered)):
        chained = _chained(ordered, i, state)
        if chained != i:
            ordered.insert(i, ordered.pop(chained))
        event = ordered[i]
        before = state
        state, timers = advance(table, state, event.created)
        outcome = table.apply(state, event, max(event.created, state.since))
        steps.append(Step(event, before, tuple(timers), outcome))
        state = outcome.state
    return state, steps
