"""A subject's Stripe history as a fold: the same events give the same state, whatever order they came in.

Stripe does not order deliveries, so the state a subject ends in is defined as the fold of its
events sorted by `created` (ties broken by where the event sits in a subscription's life, then by
id), with due timers firing at their deadlines between events. An event that arrives in order is
one step of the fold; one that arrives late makes the fold run again from before it.
"""
from __future__ import annotations

from collections.abc import Iterable
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
MAX_TIMER_CHAIN = 32


def event_order(event: StripeEvent) -> tuple:
    return (event.created, _LIFE_ORDER.get(event.type, 7), event.id)


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
    """Fold events (in event_order) over base. Each event acts at its own `created` instant."""
    state = base
    steps = []
    for event in sorted(events, key=event_order):
        before = state
        state, timers = advance(table, state, event.created)
        outcome = table.apply(state, event, max(event.created, state.since))
        steps.append(Step(event, before, tuple(timers), outcome))
        state = outcome.state
    return state, steps
