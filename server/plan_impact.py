"""`plangate diff --database URL`: what a plan change does to the subjects stored there. How many are in each
affected status and tier, how many would be over a lowered quota right now, whose timers would change, and
which stored names the new plan would strand. Reads only (the store is opened, never migrated or written)."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

from plangate.engine import StateTable, UnknownStatus, compile_plan
from plangate.policy import TIER_FEATURES, Area, ExistingSubscribers, Impact, Plan, PlanChange, PlanDiff, stranded
from plangate.policy.cli import ImpactError

from .config import shown_address
from .store import StoredSubject, StoreError, open_store
from .store._plans import Census
from .store._sqlite import sqlite_path

EXAMINED = 50_000      # subjects read per change at most (the census counts them all)


def impact_on_store(result: PlanDiff, database: str) -> list[Impact]:
    """The impact rows of a diff on the store at `database`; ImpactError when the store cannot be read."""
    try:
        return asyncio.run(_impact(result, database))
    except (StoreError, OSError) as exc:
        raise ImpactError(f"cannot read the store {shown_address(database)}: {exc}") from None


async def _impact(result: PlanDiff, database: str) -> list[Impact]:
    if not database.startswith(("postgresql://", "postgres://")) and not Path(sqlite_path(database)).is_file():
        raise ImpactError(f"{database}: no such SQLite file (the gate's PLANGATE_DATABASE)")
    store = open_store(database)
    await store.open()
    try:
        return await impact_in(store, result, time.time())
    finally:
        await store.close()


async def impact_in(store, result: PlanDiff, now: float) -> list[Impact]:
    """The impact rows of a diff on an open store (plangate diff --database, and the console's plan page)."""
    census = await store.census()
    where = result.new.document.key_location(("statuses",))
    out = [Impact(f"{s.describe()} would be stranded; {s.fix()}", s.count, strands=True, location=where)
           for s in stranded(result.new, census.statuses, census.tiers)]
    old, new = compile_plan(result.old), compile_plan(result.new)
    for change in result.changes:
        found = await _change_impact(store, census, old, new, change, now)
        if found is not None:
            out.append(found)
    out.append(Impact(f"{census.total} stored subject(s) in all", census.total))
    return out


def reached(census: Census, old: Plan, change: PlanChange) -> int:
    """How many stored subjects a change reaches: those in its statuses and on its tiers; of a tier's features,
    only those in a status that grants its tier's features (a subject with no tier has the default one)."""
    if change.area is Area.FEATURE and change.tiers and not change.statuses:
        takes = {s.name for s in old.statuses if TIER_FEATURES in s.features}
        return sum(n for status, tier, _, n in census.rows
                   if status in takes and (tier or old.default_tier) in change.tiers)
    return sum(census.statuses.get(s, 0) for s in change.statuses) + \
        sum(census.tiers.get(t, 0) for t in change.tiers)


async def _change_impact(store, census: Census, old: StateTable, new: StateTable, change: PlanChange,
                         now: float) -> Impact | None:
    if change.strands:
        return None     # counted by the census above, by name
    subjects = reached(census, old.plan, change)
    if not subjects or change.area is Area.TRANSITION:
        return None
    if change.lowered and change.meter is not None:
        return await _over_quota(store, old, new, change, subjects, now)
    if change.area is Area.TIMER:
        rows = await store.subjects_named(change.statuses, (), EXAMINED)
        running = sum(1 for r in rows if r.state.timer_due is not None)
        kept = "; running timers keep their due time, the new one applies to subjects entering the status" \
            if running else ""
        return Impact(f"{change.message}: {running} of {subjects} subject(s) have a running timer{kept}", subjects,
                      location=change.location, running_timers=running)
    return Impact(f"{change.message}: {subjects} subject(s)", subjects, location=change.location)


async def _over_quota(store, old: StateTable, new: StateTable, change: PlanChange, subjects: int,
                      now: float) -> Impact:
    rows = await store.subjects_named(change.statuses, change.tiers, EXAMINED)
    over = 0
    meter = change.meter or ""      # a quota's change names its meter
    for stored in rows:
        used = await _used(store, old, stored, meter, now)
        limit = _new_limit(new, stored, meter, now)
        if used is not None and used > ((change.limit or 0) if limit is None else limit):
            over += 1
    examined = f" (of the first {len(rows)})" if len(rows) < subjects else ""
    kept = change.existing_subscribers
    when = "" if kept in (None, ExistingSubscribers.NOW) else \
        f"; they keep the old quota ({kept.value})" if kept is ExistingSubscribers.NEVER else \
        "; they keep the old quota until their next billing period"
    return Impact(f"{change.message}: {subjects} subject(s), {over}{examined} over the new limit of {change.limit} "
                  f"right now{when}", subjects, location=change.location, over_limit=over)


def _new_limit(new: StateTable, stored: StoredSubject, meter: str, now: float) -> int | None:
    """The subject's own limit under the new plan (per seat or trait, with its add-ons); None: it cannot say."""
    try:
        return new.can_process(new.named(stored.state, now), meter, 1, 0, now).limit
    except (UnknownStatus, ValueError):
        return None


async def _used(store, old: StateTable, stored: StoredSubject, meter: str, now: float) -> int | None:
    """The subject's usage of its current window under the plan running now (None: that plan cannot say)."""
    try:
        span = old.window(stored.state, meter, now)
    except (UnknownStatus, ValueError):
        return None
    found = await store.used(stored.state.subject, [(meter, span.start)])
    return found[(meter, span.start)]
