"""An in-memory usage book: what the store does durably, for scenarios and tests."""
from __future__ import annotations

from ._decision import Decision
from ._state import SubjectState
from ._table import StateTable


class UsageBook:
    """Usage per (subject, meter, window start); a new window is a new key, so resets need no job."""

    def __init__(self, table: StateTable):
        self.table = table
        self._used: dict[tuple[str, str, int], int] = {}

    def used(self, state: SubjectState, meter: str, now: float) -> int:
        span = self.table.window(state, meter, now)
        return self._used.get((state.subject, meter, span.start), 0)

    def check(self, state: SubjectState, meter: str, amount: int, now: float) -> Decision:
        return self.table.can_process(state, meter, amount, self.used(state, meter, now), now)

    def consume(self, state: SubjectState, meter: str, amount: int, now: float) -> Decision:
        span = self.table.window(state, meter, now)
        key = (state.subject, meter, span.start)
        decision, after = self.table.consume(state, meter, amount, self._used.get(key, 0), now)
        if decision.allowed:
            self._used[key] = after
        return decision

    def record(self, state: SubjectState, meter: str, amount: int, now: float) -> int:
        span, after = self.table.increment_usage(state, meter, amount, self.used(state, meter, now), now)
        self._used[(state.subject, meter, span.start)] = after
        return after
