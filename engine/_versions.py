"""Plan versions in the engine: stored names a plan renamed or retired, and subjects kept on an older
version's tier quotas (grandfathered, as the tier's `existing_subscribers` says).

A table compiled with older plan versions holds, for each older version whose tier quotas some tier keeps,
the rules of the active plan's statuses with that version's tier quotas, compiled once: deciding a subject
on such a version is one dict lookup away from deciding any other.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from plangate.policy import ExistingSubscribers, Plan, Tier

from ._state import SubjectState

PLAN_TRIGGER = "plan"       # the trigger of a plan change in audit rows and outcomes


@dataclass(frozen=True)
class Pinned:
    """An older plan version some subjects are kept on: the rules with its tier quotas, and per tier of the
    active plan (by name) how long a subscriber keeps them."""

    version: str
    rules: dict                                   # status -> tier -> meter -> rule, as StateTable._rules
    keeps: Mapping[str, ExistingSubscribers]      # only tiers whose quotas or credits changed and do not apply now
    tiers: Mapping[str, Tier] = field(default_factory=dict)     # each kept tier (by active name) in this version

    def credits(self, tier: str, meter: str):
        """What the kept tier granted of the meter each window in this version (a PeriodGrant), or None."""
        was = self.tiers.get(tier)
        return None if was is None else next((g for g in was.credits if g.meter == meter), None)


def former_names(active: Plan, plans: Iterable[Plan]) -> dict[str, tuple[str, ...]]:
    """Each tier of the active plan with the names it had before, nearest first: its renamed_from, theirs in the
    older `plans`, and so on. A plan maps only one step back, so a tier renamed twice is found through the plan
    between."""
    earlier: dict[str, list[str]] = {}      # a name -> the names some plan says it was renamed from
    for plan in (active, *plans):
        for t in plan.tiers:
            froms = earlier.setdefault(t.name, [])
            froms.extend(n for n in t.renamed_from if n not in froms)
    names = {}
    for tier in active.tiers:
        seen = [tier.name]
        for name in seen:           # grows while it is read: breadth first, nearest names first
            seen.extend(n for n in earlier.get(name, ()) if n not in seen)
        names[tier.name] = tuple(seen[1:])
    return names


def counterpart(old: Plan, tier: Tier, former: tuple[str, ...]) -> Tier | None:
    """The tier of an older plan that `tier` of the active plan was: the same name, or one it had before
    (`former`, nearest first: see former_names)."""
    return old.tier(tier.name) or next((t for n in former if (t := old.tier(n)) is not None), None)


def kept_tiers(active: Plan, old: Plan, former: Mapping[str, tuple[str, ...]]) -> dict[str, Tier]:
    """Tiers of the active plan whose subscribers on `old` keep old's quotas and credits for a while: either
    changed and their `existing_subscribers` is not `now`. Each with its tier in `old`, found through `former`
    (the names each tier had before: see former_names)."""
    kept = {}
    for tier in active.tiers:
        if tier.existing_subscribers is ExistingSubscribers.NOW:
            continue
        was = counterpart(old, tier, former.get(tier.name, ()))
        if was is not None and (set(was.quotas) != set(tier.quotas) or set(was.credits) != set(tier.credits)):
            kept[tier.name] = was
    return kept


def renewed(state: SubjectState, now: float, superseded_at: float) -> bool:
    """Has the subject's billing period turned over since its plan version stopped being the active one (or has
    it none)? Past the stored period's end counts: the next period has begun, reported by Stripe or not."""
    if state.period_end is None:
        return True
    return now >= state.period_end or (state.period_start is not None and state.period_start > superseded_at)
