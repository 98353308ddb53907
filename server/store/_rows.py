"""Rows of the store's tables as values: the same columns and conversions for every database."""
from __future__ import annotations

from plangate.engine import SubjectState

from ._base import (Change, EventRecord, StoredSubject, pairs_from, pairs_json, state_from_json, state_json,
                    subscriptions_from, subscriptions_json)

SUBJECT_COLUMNS = ("subject, status, tier, since, timer_due, period_start, period_end, plan_version, paid_through, "
                   "stripe_customer, stripe_subscription, version, stripe_watermark, confirmed_at, fold_state, "
                   "trial_end, cancel_at, stripe_subscriptions, quantity, addons, traits")
EVENT_COLUMNS = ("event_id, type, created, payload, outcome, reason, subject, stripe_customer, stripe_subscription, "
                 "state_before, stripe_payment")
# The columns a change writes, in the order of subject_values().
WRITTEN = ("status", "tier", "since", "timer_due", "period_start", "period_end", "plan_version", "paid_through",
           "stripe_customer", "stripe_subscription", "stripe_watermark", "confirmed_at", "fold_state", "trial_end",
           "cancel_at", "stripe_subscriptions", "quantity", "addons", "traits")


def subject_from_row(r) -> StoredSubject:
    # SUBJECT_COLUMNS begin with SubjectState's fields in their order: passed by position, 3.95 -> 3.45 us a row
    # (the sweep converts a row per due subject).
    return StoredSubject(SubjectState(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[15], r[16],
                                      () if r[17] is None else subscriptions_from(r[17]), r[18],
                                      () if r[19] is None else pairs_from(r[19]),
                                      () if r[20] is None else pairs_from(r[20])),
                         r[11], r[9], r[10], r[12], r[13], None if r[14] is None else state_from_json(r[14]))


def subject_values(new: StoredSubject) -> tuple:
    """The values of WRITTEN for a subject's new row."""
    s = new.state
    return (s.status, s.tier, s.since, s.timer_due, s.period_start, s.period_end, s.plan_version, s.paid_through,
            new.stripe_customer, new.stripe_subscription, new.watermark, new.confirmed_at, state_json(new.fold_state),
            s.trial_end, s.cancel_at, subscriptions_json(s.subscriptions), s.quantity, pairs_json(s.addons),
            pairs_json(s.traits))


def event_from_row(r) -> EventRecord:
    return EventRecord(id=r[0], type=r[1], created=r[2], payload=r[3], outcome=r[4], reason=r[5] or "",
                       subject=r[6], stripe_customer=r[7], stripe_subscription=r[8],
                       state_before=state_from_json(r[9]), stripe_payment=r[10])


def now_of(change: Change) -> float:
    """The time a change is stamped with: its last audit's, else the state's own."""
    return change.audits[-1].at if change.audits else change.subject.state.since
