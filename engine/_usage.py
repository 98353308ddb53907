"""An in-memory usage book: what the store does durably, for scenarios and tests (credits included)."""
from __future__ import annotations

import dataclasses

from ._credits import Grant, balance, spend
from ._decision import Decision
from ._entitlements import billable, overage_cap
from ._reversals import MoneyBack, settle
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
        self._money_back: dict[tuple[str, str], dict[str, MoneyBack]] = {}   # (subject, payment) -> id -> fact
        # (subject, grant) -> fact id -> (units, taken)
        self._taken: dict[tuple[str, str], dict[str, tuple[int, int]]] = {}

    def used(self, state: SubjectState, meter: str, now: float) -> int:
        span = self.table.window(state, meter, now)
        return self._used.get((state.subject, meter, span.start), 0)

    def add_grants(self, subject: str, grants) -> None:
        """Grants made (ids already held are not made again: the same payment grants once)."""
        held = self.grants.setdefault(subject, [])
        known = {g.id for g in held}
        held.extend(g for g in grants if g.id not in known)

    def take_back(self, subject: str, fact: MoneyBack | None, grants: tuple[Grant, ...] = ()) -> int:
        """Money that came back of a payment (`fact`), and grants just bought (`grants`: money that came back
        before their purchase takes from them as they are made), settled against the subject's bought grants as
        the store settles them in the event's commit (engine._reversals); the credits taken (negative: given back by
        a refund undone)."""
        if fact is not None:
            self._money_back.setdefault((subject, fact.payment_intent), {}).setdefault(fact.id, fact)
        payments = {g.payment_intent for g in grants if g.payment_intent} | ({fact.payment_intent} if fact else set())
        taken_in_all = 0
        held = self.grants.get(subject, [])
        for i, g in enumerate(held):
            if g.payment_intent not in payments:
                continue
            facts = list(self._money_back.get((subject, g.payment_intent), {}).values())
            recorded = self._taken.setdefault((subject, g.id), {})
            remaining = g.remaining
            for t in settle(g.id, g.amount, remaining, g.paid, facts, recorded):
                recorded[t.fact.id] = (t.units, t.taken)
                remaining -= t.taken
            if remaining != g.remaining:
                taken_in_all += g.remaining - remaining
                held[i] = dataclasses.replace(g, remaining=remaining)
        return taken_in_all

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
