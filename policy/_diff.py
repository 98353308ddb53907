"""What changed between two versions of a plan, in plain words: statuses, tiers, meters, quotas, windows,
timers, transitions, features, add-ons and credits added, removed, renamed, retired or changed.

Names are matched through the new plan's `renamed_from` and `retired:` maps, so a renamed status is one
change (renamed), not a removal and an addition. A status or tier removed with no mapping strands any
stored subject in it: such a change says so, and `plangate diff` exits non-zero on it.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from dataclasses import dataclass, field, replace

from . import _diff_entitlements as entitlements
from . import _diff_quotas as quotas
from ._diff_model import Area, Effect, PlanChange, at
from ._findings import Location
from ._model import ExistingSubscribers, Plan, Quota, QuotaKind, Status, Tier, version_of
from ._renames import How, NameMap


@dataclass(frozen=True)
class Impact:
    """What a change does to stored subjects (plangate diff --database)."""

    message: str
    subjects: int                   # the stored subjects it reaches
    strands: bool = False
    location: Location | None = None
    over_limit: int | None = None   # of them, over a lowered quota's new limit right now (a quota's change)
    running_timers: int | None = None   # of them, with a timer running (a timer's change)

    def to_dict(self) -> dict:
        found = {"message": self.message, "subjects": self.subjects, "strands": self.strands}
        found.update((k, v) for k, v in (("over_limit", self.over_limit), ("running_timers", self.running_timers))
                     if v is not None)
        return found


@dataclass(frozen=True)
class PlanDiff:
    old: Plan
    new: Plan
    changes: tuple[PlanChange, ...]
    impact: tuple[Impact, ...] | None = field(default=None)

    @property
    def strands(self) -> bool:
        """Would the new plan strand subjects? With the impact on a store: if stored subjects are stranded;
        without: if a status or tier is removed with no mapping (any subject in it would be)."""
        if self.impact is not None:
            return any(i.strands for i in self.impact)
        return any(c.strands for c in self.changes)

    def summary(self) -> str:
        """One line for the audit of a deploy."""
        if not self.changes:
            return "no change in meaning"
        counts: dict[str, int] = {}
        for c in self.changes:
            counts[c.area.value] = counts.get(c.area.value, 0) + 1
        return f"{len(self.changes)} change(s): " + ", ".join(f"{n} {area}" for area, n in counts.items())

    def to_dict(self) -> dict:
        return {"old": {"file": self.old.file, "version": version_of(self.old)},
                "new": {"file": self.new.file, "version": version_of(self.new)},
                "changes": [c.to_dict() for c in self.changes],
                "impact": None if self.impact is None else [i.to_dict() for i in self.impact],
                "strands": self.strands}


def diff(old: Plan, new: Plan) -> PlanDiff:
    """Every change from old to new, in the order: plan, meters, features, add-ons, credits, tiers, statuses,
    transitions."""
    changes = [*_plan_level(old, new), *_meters(old, new), *entitlements.features(old, new),
               *entitlements.addons(old, new), *entitlements.credit_rules(old, new), *_tiers(old, new),
               *_statuses(old, new), *_transitions(old, new)]
    return PlanDiff(old, new, tuple(changes))


def _plan_level(old: Plan, new: Plan) -> Iterator[PlanChange]:
    if old.timezone != new.timezone:
        yield PlanChange(Area.PLAN, Effect.CHANGED, f"time zone {old.timezone} -> {new.timezone}: days, weeks and "
                         "months start at another midnight", new.document.locate(("timezone",)))
    if old.default_tier != new.default_tier:
        yield PlanChange(Area.TIER, Effect.CHANGED, f"default tier {old.default_tier} -> {new.default_tier}: "
                         "subscriptions whose price is in no tier get the new one",
                         new.document.locate(("default_tier",)))


def _meters(old: Plan, new: Plan) -> Iterator[PlanChange]:
    for m in old.meters:
        now = new.meter(m.name)
        if now is None:
            yield PlanChange(Area.METER, Effect.REMOVED, f"meter '{m.name}' removed: the workflow server can no "
                             "longer check or count it", at(new, "meters"), lowered=True)
        elif now.fail_mode != m.fail_mode:
            yield PlanChange(Area.METER, Effect.CHANGED, f"meter '{m.name}' fail mode {m.fail_mode.value} -> "
                             f"{now.fail_mode.value}", now.location)
    for m in new.meters:
        if old.meter(m.name) is None:
            yield PlanChange(Area.METER, Effect.ADDED, f"meter '{m.name}' added", m.location)


def _counterparts(old_items, new_items, moves) -> Iterator[tuple[Any, Any, Any]]:
    """(old item, its new item or None, the move that maps it or None) for every old item."""
    by_name = {i.name: i for i in new_items}
    for item in old_items:
        move = moves.get(item.name)
        if item.name in by_name:
            yield item, by_name[item.name], None
        elif move is not None:
            yield item, by_name.get(move.new), move
        else:
            yield item, None, None


def _tiers(old: Plan, new: Plan) -> Iterator[PlanChange]:
    names = NameMap.of(new)
    reached = set()
    for t, now, move in _counterparts(old.tiers, new.tiers, names.tiers):
        if move is not None:
            effect = Effect.RENAMED if move.how is How.RENAMED else Effect.RETIRED
            yield PlanChange(Area.TIER, effect, move.describe(), move.location, tiers=(t.name,))
        if now is None:
            if move is None:
                yield PlanChange(Area.TIER, Effect.REMOVED, f"tier '{t.name}' removed with no mapping: stored "
                                 "subscribers on it would be stranded (add renamed_from or retired)",
                                 at(new, "tiers") if "tiers" in new.document.data else at(new), strands=True,
                                 tiers=(t.name,))
            continue
        reached.add(now.name)
        if move is None or move.how is How.RENAMED:
            yield from _tier_changes(t, now, new)
        else:       # retired into `now`: what its subscribers get there instead
            yield from _retired_into(f"tier '{t.name}' (retired into '{now.name}')", t, now, move.location, None,
                                     tiers=(t.name,))
    for t in new.tiers:
        if t.name not in reached and old.tier(t.name) is None:
            yield PlanChange(Area.TIER, Effect.ADDED, f"tier '{t.name}' added (prices {', '.join(t.prices)})",
                             t.location)


def _tier_changes(old: Tier, new: Tier, plan: Plan) -> Iterator[PlanChange]:
    name = new.name
    for price in old.prices:
        if price not in new.prices:
            heir = next((t for t in plan.tiers if price in t.prices), None)
            gets = f"tier '{heir.name}'" if heir is not None else "the default tier" if plan.default_tier else \
                "no tier (the plan has no default_tier)"
            heir = heir or plan.tier(plan.default_tier or "")
            yield PlanChange(Area.TIER, Effect.CHANGED, f"tier '{name}': price {price} no longer selects it (its "
                             f"subscriptions get {gets})", new.location, tiers=(old.name,),
                             lowered=heir is None or (heir.name != name and _gives_less(old, heir)))
    for price in new.prices:
        if price not in old.prices:
            yield PlanChange(Area.TIER, Effect.CHANGED, f"tier '{name}': price {price} now selects it", new.location)
    if old.existing_subscribers != new.existing_subscribers:
        yield PlanChange(Area.TIER, Effect.CHANGED, f"tier '{name}': existing subscribers "
                         f"{old.existing_subscribers.value} -> {new.existing_subscribers.value}", new.location)
    policy = new.existing_subscribers
    when = {ExistingSubscribers.NOW: "existing subscribers get it now",
            ExistingSubscribers.AT_RENEWAL: "existing subscribers get it at their next billing period",
            ExistingSubscribers.NEVER: "existing subscribers keep the old quota until upgraded"}[policy]
    for change in _quota_changes(f"tier '{name}'", old.quotas, new.quotas, new.location):
        yield replace(change, message=f"{change.message}; {when}", tiers=(old.name,), existing_subscribers=policy)
    yield from entitlements.feature_changes(f"tier '{name}'", old.features, new.features, new.location,
                                            tiers=(old.name,))
    # Tier credits follow existing_subscribers as its quotas do (a kept subscriber gets its version's grants).
    kept = "existing subscribers keep the old credits until upgraded" if policy is ExistingSubscribers.NEVER else when
    for change in entitlements.grant_changes(f"tier '{name}'", old.credits, new.credits, new.location,
                                             tiers=(old.name,)):
        yield replace(change, message=f"{change.message}; {kept}", existing_subscribers=policy)


def _gives_less(old: Tier, heir: Tier) -> bool:
    """Does `heir`, the tier a tier's subscriptions move to, give them less in a quota, a feature or credits?"""
    return any(c.lowered for c in _retired_into("", old, heir, heir.location, None))


def _retired_into(owner: str, old: Tier | Status, new: Tier | Status, where: Location, plan: Plan | None,
                  **affects: Any) -> Iterator[PlanChange]:
    """What subjects of a retired tier or status get in the one they move to: its quotas, features, credits
    (`plan`: the new plan, for a status's `tier` quotas)."""
    for change in _quota_changes(owner, old.quotas, new.quotas, where, plan):
        yield replace(change, location=where, **affects)
    yield from entitlements.feature_changes(owner, old.features, new.features, where, **affects)
    if isinstance(old, Tier) and isinstance(new, Tier):
        yield from entitlements.grant_changes(owner, old.credits, new.credits, where, **affects)


def _quota_changes(owner: str, old: tuple[Quota, ...], new: tuple[Quota, ...], where: Location,
                   plan: Plan | None = None) -> Iterator[PlanChange]:
    """A tier's or status's quotas, per meter; `plan`: the new plan, whose tiers a status's `tier` quota means."""
    before = {q.meter: q for q in old}
    after = {q.meter: q for q in new}
    for meter in [*before, *(m for m in after if m not in before)]:
        was: Any = before.get(meter)        # Quota | None: a LIMIT quota has its limit
        now: Any = after.get(meter)
        if was == now:
            continue
        location = now.location if now is not None and now.location is not None else where
        if now is None:
            yield PlanChange(Area.QUOTA, Effect.REMOVED, f"{owner}: no quota for {meter} any more ({was.describe()} "
                             "before): that meter is denied", location, lowered=True, meter=meter, limit=0)
            continue
        if was is None:
            yield PlanChange(Area.QUOTA, Effect.ADDED, f"{owner}: {meter} now allowed, {now.describe()}", location,
                             meter=meter)
            continue
        # The limit (counted against the subject's usage by --database) or only the ceiling past it (overage).
        fewer = quotas.limit_lowered(was, now)
        lowered = fewer or quotas.ceiling_lowered(was, now) or (
            now.kind is QuotaKind.TIER and was.kind is not QuotaKind.TIER and plan is not None and
            quotas.to_tiers_lowered(was, [t.quota(meter) for t in plan.tiers] or [None]))
        counted = {"meter": meter, "limit": now.limit} if fewer else {}
        if was.kind is QuotaKind.LIMIT and now.kind is QuotaKind.LIMIT and was.window != now.window:
            yield PlanChange(Area.WINDOW, Effect.CHANGED, f"{owner}: {meter} window {was.describe()} -> "
                             f"{now.describe()}", location, lowered=lowered, **counted)
            continue
        raised = not lowered and was.kind is QuotaKind.LIMIT and (
            now.kind is QuotaKind.UNLIMITED or (now.kind is QuotaKind.LIMIT and now.limit > was.limit))
        verb = "lowered" if lowered else "raised" if raised else "changed"
        yield PlanChange(Area.QUOTA, Effect.CHANGED, f"{owner}: {meter} quota {verb}, {was.describe()} -> "
                         f"{now.describe()}", location, lowered=lowered, **counted)


def _statuses(old: Plan, new: Plan) -> Iterator[PlanChange]:
    names = NameMap.of(new)
    reached = set()
    for s, now, move in _counterparts(old.statuses, new.statuses, names.statuses):
        if move is not None:
            effect = Effect.RENAMED if move.how is How.RENAMED else Effect.RETIRED
            yield PlanChange(Area.STATUS, effect, move.describe(), move.location, statuses=(s.name,))
        if now is None:
            if move is None:
                yield PlanChange(Area.STATUS, Effect.REMOVED, f"status '{s.name}' removed with no mapping: stored "
                                 "subjects in it would be stranded (add renamed_from or retired)",
                                 at(new, "statuses"), strands=True, statuses=(s.name,))
            continue
        if move is None or move.how is How.RENAMED:
            reached.add(now.name)
            yield from _status_changes(s, now, new)
            continue
        if s.has_timer:
            yield PlanChange(Area.TIMER, Effect.CHANGED,
                             f"status '{s.name}': its running timers ({s.expires_after_text or s.expires_at_text}) "
                             f"end; subjects enter '{now.name}' afresh", move.location, statuses=(s.name,))
        yield from _retired_into(f"status '{s.name}' (retired into '{now.name}')", s, now, move.location, new,
                                 statuses=(s.name,))
    for s in new.statuses:
        if s.name not in reached and old.status(s.name) is None:
            yield PlanChange(Area.STATUS, Effect.ADDED, f"status '{s.name}' added", s.location)


def _status_changes(old: Status, new: Status, plan: Plan) -> Iterator[PlanChange]:
    name, affects = new.name, (old.name,)
    if old.access != new.access:
        yield PlanChange(Area.STATUS, Effect.CHANGED, f"status '{name}': access {old.access.value} -> "
                         f"{new.access.value}", new.location, lowered=not new.allows, statuses=affects)
    for flag in ("initial", "terminal", "paying", "grace"):
        if getattr(old, flag) != getattr(new, flag):
            yield PlanChange(Area.STATUS, Effect.CHANGED, f"status '{name}': {flag} {str(getattr(old, flag)).lower()}"
                             f" -> {str(getattr(new, flag)).lower()}", new.location, statuses=affects)
    if old.expires_after != new.expires_after:
        words: dict[Any, str] = {None: "no timer"}
        yield PlanChange(Area.TIMER, Effect.CHANGED, f"status '{name}': timer "
                         f"{words.get(old.expires_after, old.expires_after_text)} -> "
                         f"{words.get(new.expires_after, new.expires_after_text)}", new.location, statuses=affects)
    if old.expires_at_text != new.expires_at_text:
        yield PlanChange(Area.TIMER, Effect.CHANGED, f"status '{name}': timer on the subscription's date "
                         f"{old.expires_at_text or 'none'} -> {new.expires_at_text or 'none'}", new.location,
                         statuses=affects)
    if dict(old.fail_modes) != dict(new.fail_modes):
        yield PlanChange(Area.STATUS, Effect.CHANGED, f"status '{name}': fail modes {_modes(old)} -> {_modes(new)}",
                         new.location, statuses=affects)
    for change in _quota_changes(f"status '{name}'", old.quotas, new.quotas, new.location, plan):
        yield replace(change, statuses=affects)
    yield from entitlements.feature_changes(f"status '{name}'", old.features, new.features, new.location,
                                            statuses=affects)


def _modes(status: Status) -> str:
    return ", ".join(f"{m} {mode.value}" for m, mode in status.fail_modes) or "the meters'"


def _edges(plan: Plan, rename: dict[str, str]) -> dict[tuple[str, str, str], tuple[str, Location]]:
    """(source, trigger, conditions) -> (target, location), names through `rename` (old plan -> new names)."""
    out: dict[tuple[str, str, str], tuple[str, Location]] = {}
    for t in plan.transitions:
        when = ", ".join(map(str, t.conditions))
        for src in plan.sources_of(t):
            key = (rename.get(src, src), str(t.trigger), when)
            out.setdefault(key, (rename.get(t.target, t.target), t.location))
    return out


def _transitions(old: Plan, new: Plan) -> Iterator[PlanChange]:
    names = NameMap.of(new)
    renamed = {old_name: m.new for old_name, m in names.statuses.items() if m.how is How.RENAMED}
    before, after = _edges(old, renamed), _edges(new, {})
    grouped: dict[tuple, list[str]] = {}
    for key in [*before, *(k for k in after if k not in before)]:
        src, trigger, when = key
        was, now = before.get(key), after.get(key)
        if was is not None and now is not None and was[0] == now[0]:
            continue
        kind = Effect.ADDED if was is None else Effect.REMOVED if now is None else Effect.CHANGED
        grouped.setdefault((kind, trigger, when, was and was[0], now and now[0],
                            (now or was)[1] if now else None), []).append(src)
    for (kind, trigger, when, was_to, now_to, location), sources in grouped.items():
        on = f"on {trigger}" + (f" when {when}" if when else "")
        every = {s.name for s in (new if now_to else old).statuses if not s.terminal}
        froms = "any status" if len(sources) > 1 and set(sources) >= every else ", ".join(f"'{s}'" for s in sources)
        if kind is Effect.ADDED:
            message = f"transition added: from {froms} {on} -> '{now_to}'"
        elif kind is Effect.REMOVED:
            message = f"transition removed: from {froms} {on} no longer leads to '{was_to}'"
        else:
            message = f"transition changed: from {froms} {on} now leads to '{now_to}', not '{was_to}'"
        yield PlanChange(Area.TRANSITION, kind, message, location or at(new, "transitions"),
                         statuses=tuple(sources))
