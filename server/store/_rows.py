"""Rows of the store's tables as values: the same columns and conversions for every database.

A subject's row holds each field of SubjectState, then each of StoredSubject's own fields, each in a column of
the field's name unless _COLUMN names another, as it is unless _TO_ROW / _FROM_ROW convert it (JSON text).
The column lists and the conversions below are derived from the two declarations, so a field added to either is
read and written once its migration adds the column (and, for a value SQL cannot hold, its conversion here).
"""
from __future__ import annotations

from dataclasses import fields

from plangate.engine import SubjectState

from ._base import (Change, EventRecord, StoredSubject, pairs_from, pairs_json, state_from_json, state_json,
                    subscriptions_from, subscriptions_json)

_STATE = tuple(f.name for f in fields(SubjectState))
_STORED = tuple(f.name for f in fields(StoredSubject) if f.name != "state")
_COLUMN = {"watermark": "stripe_watermark", "subscriptions": "stripe_subscriptions"}
# Fields kept as JSON text: the expression that writes one ({} is the value) and the one that reads it back.
_TO_ROW = {"fold_state": "state_json({})", "subscriptions": "subscriptions_json({})",
           "addons": "pairs_json({})", "traits": "pairs_json({})"}
_FROM_ROW = {"fold_state": "None if {0} is None else state_from_json({0})",
             "subscriptions": "() if {0} is None else subscriptions_from({0})",
             "addons": "() if {0} is None else pairs_from({0})", "traits": "() if {0} is None else pairs_from({0})"}
_SCOPE = {"StoredSubject": StoredSubject, "SubjectState": SubjectState, "state_json": state_json,
          "state_from_json": state_from_json, "subscriptions_json": subscriptions_json,
          "subscriptions_from": subscriptions_from, "pairs_json": pairs_json, "pairs_from": pairs_from}
if _STATE[0] != "subject" or set(_STATE) & set(_STORED):
    raise TypeError("a subject's row starts with its key, and no field of the row shares a state field's name")


def _column(name: str) -> str:
    return _COLUMN.get(name, name)


STATE_COLUMNS = tuple(_column(name) for name in _STATE)
SUBJECT_COLUMNS = ", ".join(STATE_COLUMNS + tuple(_column(name) for name in _STORED))
EVENT_COLUMNS = ("event_id, type, created, payload, outcome, reason, subject, stripe_customer, stripe_subscription, "
                 "state_before, stripe_payment, fold_rank, stripe_payment_intent")
# The columns a change writes (all but the key and the version), in the order of subject_values().
WRITTEN = STATE_COLUMNS[1:] + tuple(_column(name) for name in _STORED if name != "version")


def _compiled(params: str, expression: str):
    """A function compiled from the column lists: reads and writes written out cost less than
    operator.attrgetter or a tuple joined from parts, and every write of a subject makes its row's values
    (every read, its value back)."""
    return eval(f"lambda {params}: {expression}", dict(_SCOPE))


def _to_row(name: str, value: str) -> str:
    return _TO_ROW[name].format(value) if name in _TO_ROW else value


_STATE_VALUES = _compiled("o", "(" + "".join(f"{_to_row(n, 'o.' + n)}, " for n in _STATE[1:]) + ")")
_SUBJECT_VALUES = _compiled("o", "(" + "".join(f"{_to_row(n, 'o.state.' + n)}, " for n in _STATE[1:])
                            + "".join(f"{_to_row(n, 'o.' + n)}, " for n in _STORED if n != "version") + ")")
_FROM = [_FROM_ROW.get(name, "{0}").format(f"r[{i}]") for i, name in enumerate(_STATE + _STORED)]
subject_from_row = _compiled("r", f"StoredSubject(SubjectState({', '.join(_FROM[:len(_STATE)])}), "
                                  f"{', '.join(_FROM[len(_STATE):])})")
subject_from_row.__doc__ = "A row of SUBJECT_COLUMNS (a tuple, or a database's record) as a StoredSubject."


def subject_values(new: StoredSubject) -> tuple:
    """The values of WRITTEN for a subject's new row."""
    return _SUBJECT_VALUES(new)


def state_values(state: SubjectState) -> tuple:
    """The values of a state's columns but the subject (STATE_COLUMNS[1:]), in their order."""
    return _STATE_VALUES(state)


def event_from_row(r) -> EventRecord:
    return EventRecord(id=r[0], type=r[1], created=r[2], payload=r[3], outcome=r[4], reason=r[5] or "",
                       subject=r[6], stripe_customer=r[7], stripe_subscription=r[8],
                       state_before=state_from_json(r[9]), stripe_payment=r[10], fold_rank=r[11],
                       stripe_payment_intent=r[12])


def now_of(change: Change) -> float:
    """The time a change is stamped with: its last audit's, else the state's own."""
    return change.audits[-1].at if change.audits else change.subject.state.since


# The webhook log's columns: an event's as event_from_row reads them, but for its payload (large; not shown).
EVENT_LOG_COLUMNS = EVENT_COLUMNS.replace("payload", "'' AS payload")


def event_log_sql(outcome: str | None, type_: str | None, before: tuple[float, str] | None,
                  mark) -> tuple[str, list]:
    """The webhook log's query and its arguments; mark(n) writes the n-th placeholder (? or $n). Conditions are
    added only when given, so that the planner picks the (outcome, created, event_id) or (created, event_id)
    index."""
    where: list[str] = []
    args: list = []
    for column, value in (("outcome", outcome), ("type", type_)):
        if value is not None:
            args.append(value)
            where.append(f"{column} = {mark(len(args))}")
    if before is not None:
        args.extend(before)
        where.append(f"(created < {mark(len(args) - 1)} OR (created = {mark(len(args) - 1)} "
                     f"AND event_id < {mark(len(args))}))")
    args.append(None)   # the limit, set by the caller
    sql = (f"SELECT {EVENT_LOG_COLUMNS} FROM subscription_events "
           f"{'WHERE ' + ' AND '.join(where) if where else ''} "
           f"ORDER BY created DESC, event_id DESC LIMIT {mark(len(args))}")
    return sql, args


def pending_linked_sql(after: tuple[float, str] | None, mark) -> tuple[str, list]:
    """Store.pending_linked's query and its arguments (mark as for event_log_sql). It goes through the pending
    events in (created, event_id) order on the (outcome, created, event_id) index, and asks of each the indexes
    find_subject asks: a subject's subscription or customer, a linked subscription, charge or payment intent."""
    args: list = []
    after_key = ""
    if after is not None:
        args.extend(after)
        after_key = f"AND (e.created > {mark(1)} OR (e.created = {mark(1)} AND e.event_id > {mark(2)})) "
    args.append(None)   # the limit, set by the caller
    sql = (f"SELECT {EVENT_LOG_COLUMNS} FROM subscription_events AS e WHERE e.outcome = 'pending' {after_key}"
           "AND (EXISTS (SELECT 1 FROM subscriptions AS s WHERE s.stripe_subscription = e.stripe_subscription) "
           "OR EXISTS (SELECT 1 FROM subscriptions AS s WHERE s.stripe_customer = e.stripe_customer) "
           "OR EXISTS (SELECT 1 FROM stripe_links AS l WHERE l.stripe_id = e.stripe_subscription) "
           "OR EXISTS (SELECT 1 FROM stripe_links AS l WHERE l.stripe_id = e.stripe_payment) "
           "OR EXISTS (SELECT 1 FROM stripe_links AS l WHERE l.stripe_id = e.stripe_payment_intent)) "
           f"ORDER BY e.created, e.event_id LIMIT {mark(len(args))}")
    return sql, args
