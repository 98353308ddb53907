"""An in-memory usage book: what the store does durably, for scenarios and tests (credits included)."""
from __future__ import annotations

from ._credits import Grant, balance, spend
from ._decision import Decision
from ._entitlements import billable, overage_cap
from ._state import SubjectState
from ._table import StateTable


class UsageBook:
    """Usage per (subject, meter, window start); a new window is a new key, so resets need no job. Credit grants
    per subject, spent as the store spends them; overage billed per window (at most its cap) and per meter."""

    def __init__(self, table: StateTable):
        self.table = table
        self._used: dict[tuple[str, str, int], int] = {}
        self._billed: dict[tuple[str, str, int], int] = {}  # (subject, meter, window start) -> overage billed
        self.grants: dict[str, list[Grant]] = {}
        self.overage: dict[tuple[str, str], int] = {}       # (subject, meter) -> overage billed so far

    def used(self, state: SubjectState, meter: str, now: float) -> int:
        span = self.table.window(state, meter, now)
        return self._used.get((state.subject, meter, span.start), 0)

    def add_grants(self, subject: str, grants) -> None:
        """Grants made (ids already held are not made again: the same payment grants once)."""
        held = self.grants.setdefault(subject, [])
        known = {g.id for g in held}
        held.extend(g for g in grants if g.id not in known)

    def balance(self, state: SubjectState, meter: str, now: float) -> int:
        """The subject's spendable credits of the meter now (the tier's grant of this window included)."""
        if not self.table.has_credits(meter):
            return 0
        # The tier's grants end with their windows as the billing period says them now, as the store's do.
        held, _, new = self.table.tier_grants(state, meter, now, self.grants.get(state.subject, []))
        self.grants[state.subject] = held
        self.add_grants(state.subject, new)
        return balance(self.grants.get(state.subject, ()), meter, now, self.table.spendable(state, meter, now))

    def check(self, state: SubjectState, meter: str, amount: int, now: float) -> Decision:
        span = self.table.window(state, meter, now)
        return self.table.can_process(state, meter, amount, self.used(state, meter, now), now,
                                      self.balance(state, meter, now),
                                      self._billed.get((state.subject, meter, span.start), 0))

    def consume(self, state: SubjectState, meter: str, amount: int, now: float) -> Decision:
        span = self.table.window(state, meter, now)
        key = (state.subject, meter, span.start)
        decision, after = self.table.consume(state, meter, amount, self._used.get(key, 0), now,
                                             self.balance(state, meter, now), self._billed.get(key, 0))
        if decision.allowed:
            self._used[key] = after
            self._spent(state, meter, decision.credits_used, now)
            self._bill(key, decision.overage)
        return decision

    def record(self, state: SubjectState, meter: str, amount: int, now: float) -> int:
        """Count work that already ran, whatever the quota says, as the store does: past the limit the subject's
        credits pay for it first, then it is overage, counted, and billed only up to the window's cap (what is
        past the cap is counted, never billed). The window's usage after."""
        span, after = self.table.increment_usage(state, meter, amount, self.used(state, meter, now), now)
        key = (state.subject, meter, span.start)
        rule = self.table.rule(state, meter, now)
        limit = rule.limit_for(state)
        if rule.beyond and limit is not None and after > limit:
            rest = amount - max(min(amount, limit - (after - amount)), 0)
            spent = min(rest, self.balance(state, meter, now)) if rule.credits else 0
            self._spent(state, meter, spent, now)
            after -= spent
            self._bill(key, billable(rest - spent, self._billed.get(key, 0), overage_cap(rule)))
        self._used[key] = after
        return after

    def _spent(self, state: SubjectState, meter: str, amount: int, now: float) -> None:
        if amount:
            self.grants[state.subject], _ = spend(self.grants[state.subject], meter, amount, now,
                                                  self.table.spendable(state, meter, now))

    def _bill(self, key: tuple[str, str, int], overage: int) -> None:
        if overage:
            self._billed[key] = self._billed.get(key, 0) + overage
            self.overage[key[:2]] = self.overage.get(key[:2], 0) + overage
