"""Entitlements beyond a status's quota, compiled once per plan: features per status and tier, add-ons, and what
a decision does past a limit (credits first, then overage).

Pure, like the rest of the engine: the subject's credit balance is an argument, as its usage is.
"""
from __future__ import annotations

import math

from plangate.policy import TIER_FEATURES, Plan

from ._decision import Decision, Reason
from ._state import SubjectState

# The overage allowed past a limit when a quota's overage is unbounded: more than any window will hold.
OVERAGE_UNBOUNDED = 1 << 62
_OK, _NOT_ENTITLED, _DENIES, _EXHAUSTED = Reason.OK, Reason.NOT_ENTITLED, Reason.STATUS_DENIES, Reason.QUOTA_EXHAUSTED


class UnknownFeature(ValueError):
    """The feature is not declared in the plan."""


class Features:
    """Which features each status grants for each tier: a dict per (status, tier) from feature to the plan line
    that grants it, so a check is two lookups. Add-ons' features count where a status takes the tier's."""

    def __init__(self, plan: Plan):
        self.names = tuple(f.name for f in plan.features)
        self._addons = {a.name: frozenset(a.features) for a in plan.addons if a.features}
        self._addon_lines = {a.name: a.location.line for a in plan.addons}
        self.granted: dict[str, dict[str | None, dict[str, str]]] = {}
        self.takes_tier: dict[str, bool] = {}
        self.refused: dict[str, tuple[Reason, str]] = {}      # status -> (reason, rule) of a feature not granted
        for s in plan.statuses:
            where = f"{plan.file}:{{}} statuses.{s.name}"
            line = plan.document.locate(("statuses", s.name, "features")).line if s.features else s.location.line
            own = {f: where.format(line) + ".features" for f in s.features if f != TIER_FEATURES}
            self.takes_tier[s.name] = s.allows and TIER_FEATURES in s.features
            by_tier: dict[str | None, dict[str, str]] = {}
            for tier_name in [None] + [t.name for t in plan.tiers]:
                granted = dict(own) if s.allows else {}
                tier = plan.tier(tier_name or plan.default_tier or "")
                if self.takes_tier[s.name] and tier is not None:
                    via = f" (via statuses.{s.name}.features)"
                    granted.update({f: f"{plan.file}:{tier.location.line} tiers.{tier.name}.features{via}"
                                    for f in tier.features if f not in granted})
                by_tier[tier_name] = granted
            self.granted[s.name] = by_tier
            if not s.allows:
                access = plan.document.locate(("statuses", s.name, "access")).line
                self.refused[s.name] = (_DENIES, where.format(access) + ".access")
            else:
                self.refused[s.name] = (_NOT_ENTITLED, where.format(line) + (".features" if s.features else
                                                                             " (no features)"))
        self._file = plan.file

    def decide(self, state: SubjectState, feature: str) -> Decision:
        """Is `feature` granted to the subject now (the state under the plan's names)?"""
        status = state.status
        rule = self.granted[status].get(state.tier, self.granted[status][None]).get(feature)
        if rule is None and state.addons and self.takes_tier[status]:
            rule = self._by_addon(state, feature)
        if rule is not None:
            return Decision(True, _OK, status, state.tier, None, None, None, None, None, None, None, rule, feature)
        if feature not in self.names:
            raise UnknownFeature(f"feature {feature!r} is not in the plan; known: {', '.join(self.names) or 'none'}")
        reason, rule = self.refused[status]
        return Decision(False, reason, status, state.tier, None, None, None, None, None, None, None, rule, feature)

    def _by_addon(self, state: SubjectState, feature: str) -> str | None:
        for name, quantity in state.addons:
            if quantity > 0 and feature in self._addons.get(name, ()):
                return f"{self._file}:{self._addon_lines[name]} addons.{name}.features (a live add-on)"
        return None

    def of(self, state: SubjectState) -> list[str]:
        """Every feature the subject has now, in the plan's order (for views)."""
        return [f for f in self.names if self.decide(state, f).allowed]


def billable(over: int, billed: int, cap: int | None) -> int:
    """How much of a piece of work's overage `over` is billed, its window having billed `billed` already: a
    window bills at most `cap` (None: unbounded). What is past it is counted (work that already ran) but never
    billed; a consume is refused instead (see beyond)."""
    if cap is None:
        return over
    return max(0, min(over, cap - billed))


def overage_cap(rule) -> int | None:
    """The overage a window of the rule may bill: its `up_to`, 0 for a rule without overage, None unbounded."""
    if rule.overage == OVERAGE_UNBOUNDED:
        return None
    return rule.overage or 0


def beyond(rule, state: SubjectState, meter: str, amount: int, used: int, limit: int, span, now: float,
           balance: int, billed: int | None = None) -> Decision:
    """The decision for work that does not fit in what is left of the window's limit, where the rule lets the
    subject go past it: its credits are spent first, then overage (up to the rule's cap a window). `balance`:
    the subject's spendable credits of the meter. `billed`: the overage the window has billed so far (None: not
    known, taken as its usage past the limit). Both bound the overage: the window never holds more than the
    limit and the cap, nor bills more than the cap, when the limit changed within it (seats, a plan's deploy)."""
    remaining = limit - used if used < limit else 0
    rest = amount - remaining
    spent = min(rest, balance) if rule.credits and balance > 0 else 0
    over = rest - spent
    credits = balance - spent if rule.credits else None
    if over == 0:
        return Decision(True, _OK, state.status, state.tier, meter, limit, used, remaining, span.start, span.end,
                        None, rule.name, None, credits, spent, 0)
    if rule.overage is not None:
        so_far = used - limit if used > limit else 0
        if billed is not None and billed > so_far:
            so_far = billed
        if so_far + over <= rule.overage:
            return Decision(True, _OK, state.status, state.tier, meter, limit, used, remaining, span.start,
                            span.end, None, rule.name, None, credits, spent, over)
    retry = math.ceil(span.end - now) if span.end is not None and amount <= limit else None
    return Decision(False, _EXHAUSTED, state.status, state.tier, meter, limit, used, remaining, span.start,
                    span.end, retry, rule.name, None, balance if rule.credits else None, 0, 0)
