"""Rows of the store's tables as values: the same columns and conversions for every database.

A subject's row holds each field of SubjectState in a column of the same name, then StoredSubject's other
fields (in _STORED_COLUMN's columns where the names differ): the column lists and conversions below are
derived from the two declarations, so a field added to either is read and written once its migration adds
the column.
"""
from __future__ import annotations

from dataclasses import fields

from plangate.engine import SubjectState

from ._base import Change, EventRecord, StoredSubject, state_from_json, state_json

STATE_COLUMNS = tuple(f.name for f in fields(SubjectState))
_STORED = tuple(f.name for f in fields(StoredSubject) if f.name != "state")
_STORED_COLUMN = {"watermark": "stripe_watermark"}
if _STORED[-1] != "fold_state" or STATE_COLUMNS[0] != "subject":
    raise TypeError("subject_from_row reads the subject first and fold_state (JSON) last")

SUBJECT_COLUMNS = ", ".join(STATE_COLUMNS + tuple(_STORED_COLUMN.get(name, name) for name in _STORED))
EVENT_COLUMNS = ("event_id, type, created, payload, outcome, reason, subject, stripe_customer, stripe_subscription, "
                 "state_before")
# The columns a change writes (all but the key and the version), in the order of subject_values().
WRITTEN = STATE_COLUMNS[1:] + tuple(_STORED_COLUMN.get(name, name) for name in _STORED if name != "version")



def _values_of(paths: list[str]):
    """A function of an object that returns the tuple of the values at `paths` (attribute names, dotted, or
    a call `json(...)`), compiled: reads written out cost less than operator.attrgetter or a tuple joined from
    parts, and every write of a subject reads its row's values."""
    return eval(f"lambda o: ({''.join(f'{path}, ' for path in paths)})", {"json": state_json})


_N_STATE = len(STATE_COLUMNS)
_STATE_WRITTEN = _values_of([f"o.{name}" for name in STATE_COLUMNS[1:]])
# WRITTEN's values: the state's, then the row's own between the version and the fold state (JSON).
_SUBJECT_WRITTEN = _values_of([f"o.state.{name}" for name in STATE_COLUMNS[1:]]
                              + [f"o.{name}" for name in _STORED[1:-1]] + ["json(o.fold_state)"])


def _from_row():
    """subject_from_row, compiled from the column lists like _values_of (a sweep converts a row per due
    subject, a webhook event one or two)."""
    state = ", ".join(f"r[{i}]" for i in range(_N_STATE))
    stored = "".join(f"r[{i}], " for i in range(_N_STATE, _N_STATE + len(_STORED) - 1))
    last = _N_STATE + len(_STORED) - 1
    return eval(f"lambda r: StoredSubject(SubjectState({state}), {stored}None if r[{last}] is None else "
                f"state_from_json(r[{last}]))",
                {"StoredSubject": StoredSubject, "SubjectState": SubjectState, "state_from_json": state_from_json})


subject_from_row = _from_row()
subject_from_row.__doc__ = "A row of SUBJECT_COLUMNS (a tuple, or a database's record) as a StoredSubject."


def subject_values(new: StoredSubject) -> tuple:
    """The values of WRITTEN for a subject's new row."""
    return _SUBJECT_WRITTEN(new)


def state_values(state: SubjectState) -> tuple:
    """The values of a state's columns but the subject (STATE_COLUMNS[1:]), in their order."""
    return _STATE_WRITTEN(state)


def event_from_row(r) -> EventRecord:
    return EventRecord(id=r[0], type=r[1], created=r[2], payload=r[3], outcome=r[4], reason=r[5] or "",
                       subject=r[6], stripe_customer=r[7], stripe_subscription=r[8],
                       state_before=state_from_json(r[9]))


def now_of(change: Change) -> float:
    """The time a change is stamped with: its last audit's, else the state's own."""
    return change.audits[-1].at if change.audits else change.subject.state.since
