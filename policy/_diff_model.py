"""The words of a plan's diff: what part of the plan a change is in, what happened to it, and the change."""
from __future__ import annotations

import enum
from dataclasses import dataclass

from ._findings import Location
from ._model import ExistingSubscribers, Plan


class Effect(enum.Enum):
    ADDED = "added"
    REMOVED = "removed"
    RENAMED = "renamed"
    RETIRED = "retired"
    CHANGED = "changed"


class Area(enum.Enum):
    PLAN = "plan"
    METER = "meter"
    TIER = "tier"
    STATUS = "status"
    QUOTA = "quota"
    WINDOW = "window"
    TIMER = "timer"
    TRANSITION = "transition"
    FEATURE = "feature"
    ADDON = "addon"
    CREDITS = "credits"


@dataclass(frozen=True)
class PlanChange:
    """One difference. `statuses`/`tiers` name (in the old plan's words) whose stored subjects it affects;
    `meter` and `limit` describe a lowered quota (the new limit)."""

    area: Area
    effect: Effect
    message: str
    location: Location
    strands: bool = False
    lowered: bool = False
    statuses: tuple[str, ...] = ()
    tiers: tuple[str, ...] = ()
    meter: str | None = None
    limit: int | None = None
    existing_subscribers: ExistingSubscribers | None = None

    def to_dict(self) -> dict:
        return {"area": self.area.value, "effect": self.effect.value, "message": self.message,
                "file": self.location.file, "line": self.location.line, "strands": self.strands,
                "lowered": self.lowered, "statuses": list(self.statuses), "tiers": list(self.tiers)}


def at(plan: Plan, *path) -> Location:
    """Where the key at `path` is in the plan's file (no path: the file's start)."""
    return plan.document.key_location(path) if path else plan.document.locate(())
