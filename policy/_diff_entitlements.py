"""What changed in a plan's entitlements (plangate diff, after _diff's statuses and tiers): features, add-ons,
the credits packs buy, and what tiers and statuses grant of them.

A change that takes something away from subscribers (a feature, credits, what an add-on adds) is `lowered`,
as a lowered quota is: `plangate diff` marks it, and with --database it counts the stored subjects it reaches
(a status's or a tier's; an add-on's subjects are not counted by name).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ._diff_model import Area, Effect, PlanChange, at
from ._entitlements import TIER_FEATURES, Addon, CreditRule, OnCancel, PeriodGrant
from ._findings import Location
from ._model import Plan


def features(old: Plan, new: Plan) -> Iterator[PlanChange]:
    """The plan's own features, declared or not any more."""
    for was, now in _pairs(old.features, new.features, lambda f: f.name):
        if now is None:
            yield PlanChange(Area.FEATURE, Effect.REMOVED, f"feature '{was.name}' removed: a check for it is refused "
                             "(422 unknown_feature)", at(new, "features"), lowered=True)
        elif was is None:
            yield PlanChange(Area.FEATURE, Effect.ADDED, f"feature '{now.name}' added", now.location)


def feature_changes(owner: str, old: tuple[str, ...], new: tuple[str, ...], where: Location,
                    **affects: Any) -> Iterator[PlanChange]:
    """A status's, a tier's or an add-on's features, gained and lost (in one change)."""
    lost, gained = [f for f in old if f not in new], [f for f in new if f not in old]
    if lost or gained:
        what = [f"loses {_names(lost)}"] * bool(lost) + [f"gains {_names(gained)}"] * bool(gained)
        yield PlanChange(Area.FEATURE, Effect.CHANGED, f"{owner}: features {_names(old)} -> {_names(new)} "
                         f"({'; '.join(what)})", where, lowered=bool(lost), **affects)


def grant_changes(owner: str, old: tuple[PeriodGrant, ...], new: tuple[PeriodGrant, ...], where: Location,
                  **affects: Any) -> Iterator[PlanChange]:
    """The credits a tier grants each window, per meter."""
    before, after = {g.meter: g for g in old}, {g.meter: g for g in new}
    for meter in [*before, *(m for m in after if m not in before)]:
        was, now = before.get(meter), after.get(meter)
        if was == now:
            continue
        if now is None:
            assert was is not None
            yield PlanChange(Area.CREDITS, Effect.REMOVED, f"{owner}: no {meter} credits granted any more "
                             f"({was.describe()} before)", where, lowered=True, **affects)
        elif was is None:
            yield PlanChange(Area.CREDITS, Effect.ADDED, f"{owner}: {now.describe()} of {meter}", now.location,
                             **affects)
        else:
            unknown = was.window != now.window and "billing_period" in (was.window, now.window)
            yield PlanChange(Area.CREDITS, Effect.CHANGED, f"{owner}: {meter}: {was.describe()} -> "
                             f"{now.describe()}" + (" (a billing period is as long as the price's interval: "
                                                    "compare by hand)" if unknown else ""),
                             now.location, lowered=_fewer(was, now), **affects)


def addons(old: Plan, new: Plan) -> Iterator[PlanChange]:
    for was, now in _pairs(old.addons, new.addons, lambda a: a.name):
        if now is None:
            heirs = [a.name for a in new.addons if set(a.prices) & set(was.prices)]
            then = f"its prices now buy {', '.join(repr(h) for h in heirs)} (from each subscription's next event)" \
                if heirs else f"its prices ({', '.join(was.prices)}) buy nothing any more"
            yield PlanChange(Area.ADDON, Effect.REMOVED, f"add-on '{was.name}' removed: subjects holding it lose "
                             f"what it gave{_gave(was)} now, and {then}", at(new, "addons"), lowered=True)
        elif was is None:
            yield PlanChange(Area.ADDON, Effect.ADDED, f"add-on '{now.name}' added (prices {', '.join(now.prices)})",
                             now.location)
        else:
            yield from _addon_changes(was, now)


def _addon_changes(old: Addon, new: Addon) -> Iterator[PlanChange]:
    owner = f"add-on '{new.name}'"
    for price in old.prices:
        if price not in new.prices:
            yield PlanChange(Area.ADDON, Effect.CHANGED, f"{owner}: price {price} no longer buys it", new.location,
                             lowered=True)
    for price in new.prices:
        if price not in old.prices:
            yield PlanChange(Area.ADDON, Effect.CHANGED, f"{owner}: price {price} now buys it", new.location)
    yield from feature_changes(owner, old.features, new.features, new.location)
    before, after = dict(old.quotas), dict(new.quotas)
    for meter in [*before, *(m for m in after if m not in before)]:
        was, now = before.get(meter, 0), after.get(meter, 0)
        if was != now:
            yield PlanChange(Area.ADDON, Effect.CHANGED, f"{owner}: adds {now} {meter} a unit to the tier's limit "
                             f"(was {was})", new.location, lowered=now < was)


def credit_rules(old: Plan, new: Plan) -> Iterator[PlanChange]:
    """The credits of each meter: the packs that buy them, how long they last, their order, on cancel."""
    for was, now in _pairs(old.credits, new.credits, lambda c: c.meter):
        if now is None:
            yield PlanChange(Area.CREDITS, Effect.REMOVED, f"credits of {was.meter} removed: its packs "
                             f"({', '.join(p for p, _ in was.packs)}) buy nothing any more", at(new, "credits"),
                             lowered=True)
        elif was is None:
            yield PlanChange(Area.CREDITS, Effect.ADDED, f"credits of {now.meter} added (packs "
                             f"{', '.join(f'{p}: {n}' for p, n in now.packs)})", now.location)
        else:
            yield from _credit_changes(was, now)


def _credit_changes(old: CreditRule, new: CreditRule) -> Iterator[PlanChange]:
    owner, where = f"credits of {new.meter}", new.location
    before, after = dict(old.packs), dict(new.packs)
    for price in [*before, *(p for p in after if p not in before)]:
        was, now = before.get(price), after.get(price)
        if was == now:
            continue
        if now is None:
            yield PlanChange(Area.CREDITS, Effect.CHANGED, f"{owner}: price {price} buys none any more (it bought "
                             f"{was} a unit)", where, lowered=True)
        elif was is None:
            yield PlanChange(Area.CREDITS, Effect.CHANGED, f"{owner}: price {price} buys {now} a unit", where)
        else:
            yield PlanChange(Area.CREDITS, Effect.CHANGED, f"{owner}: price {price} buys {now} a unit (was {was})",
                             where, lowered=now < was)
    if old.expires_after != new.expires_after:
        yield PlanChange(Area.CREDITS, Effect.CHANGED, f"{owner}: bought credits last "
                         f"{old.expires_after_text or 'forever'} -> {new.expires_after_text or 'forever'} "
                         "(from the next purchase)", where,
                         lowered=new.expires_after is not None and (old.expires_after is None
                                                                    or new.expires_after < old.expires_after))
    if old.priority != new.priority:
        yield PlanChange(Area.CREDITS, Effect.CHANGED, f"{owner}: priority {old.priority} -> {new.priority}", where)
    if old.on_cancel != new.on_cancel:
        yield PlanChange(Area.CREDITS, Effect.CHANGED, f"{owner}: on cancel {old.on_cancel.value} -> "
                         f"{new.on_cancel.value}", where, lowered=new.on_cancel is OnCancel.FORFEIT)


# Days in a window, to compare grants per window of another length; a billing period is the price's own (a month
# or a year): a change to or from it cannot be compared, and is marked as a loss for someone to look at.
_DAYS = {"day": 1.0, "week": 7.0, "month": 30.44}


def _fewer(was: PeriodGrant, now: PeriodGrant) -> bool:
    """Does a tier's grant give less than it did: fewer credits a day, or less carried over?"""
    if now.rollover < was.rollover:
        return True
    if was.window == now.window:
        return now.amount < was.amount
    if was.window not in _DAYS or now.window not in _DAYS:
        return True
    return now.amount / _DAYS[now.window] < was.amount / _DAYS[was.window]


def _pairs(old: Iterable[Any], new: Iterable[Any], key: Callable[[Any], str]) -> Iterator[tuple[Any, Any]]:
    """(old item, new item) by key, in the old plan's order and then the new one's: None for the side without."""
    after = {key(i): i for i in new}
    before = set()
    for item in old:
        before.add(key(item))
        yield item, after.get(key(item))
    for name, item in after.items():
        if name not in before:
            yield None, item


def _names(features: tuple[str, ...] | list[str]) -> str:
    return ", ".join("the tier's" if f == TIER_FEATURES else f for f in features) or "none"


def _gave(addon: Addon) -> str:
    gave = [*(f"feature {f}" for f in addon.features), *(f"+{n} {m} a unit" for m, n in addon.quotas)]
    return f" ({', '.join(gave)})" if gave else ""
