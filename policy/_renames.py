"""Names a plan still answers for after they left it: statuses and tiers renamed (`renamed_from`) or removed
(`retired:`), and the stored names a plan would strand (neither in the plan nor mapped).

A stored subject under an old name is moved once to the name that replaced it; a name that is neither
declared nor mapped cannot be decided, so the gate refuses to run a plan that strands stored subjects.
"""
from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from ._findings import Location
from ._model import Plan


class Kind(enum.Enum):
    STATUS = "status"
    TIER = "tier"


class How(enum.Enum):
    RENAMED = "renamed"     # the same thing under a new name: subjects keep their timer
    RETIRED = "retired"     # removed: subjects enter the declared status (or tier) instead


@dataclass(frozen=True, slots=True)
class Move:
    """Where stored subjects under an old name go."""

    kind: Kind
    old: str
    new: str
    how: How
    location: Location

    def describe(self) -> str:
        if self.how is How.RENAMED:
            return f"{self.kind.value} '{self.old}' is now '{self.new}' (renamed_from)"
        return f"{self.kind.value} '{self.old}' was removed; its subjects go to '{self.new}' (retired)"


@dataclass(frozen=True)
class NameMap:
    """Every old name of a plan, by kind. Built from a plan without error findings, where each old name is
    mapped once (the rules in _rules report the others; the first mapping wins here)."""

    statuses: Mapping[str, Move]
    tiers: Mapping[str, Move]

    @classmethod
    def of(cls, plan: Plan) -> NameMap:
        by_kind: dict[Kind, dict[str, Move]] = {Kind.STATUS: {}, Kind.TIER: {}}
        for move in moves(plan):
            by_kind[move.kind].setdefault(move.old, move)
        return cls(by_kind[Kind.STATUS], by_kind[Kind.TIER])

    def __bool__(self) -> bool:
        return bool(self.statuses or self.tiers)


def moves(plan: Plan) -> Iterator[Move]:
    """Every mapping the plan declares, in the order it declares them."""
    doc = plan.document
    for kind, owners in ((Kind.STATUS, plan.statuses), (Kind.TIER, plan.tiers)):
        section = "statuses" if kind is Kind.STATUS else "tiers"
        for owner in owners:
            for i, old in enumerate(owner.renamed_from):
                yield Move(kind, old, owner.name, How.RENAMED, doc.locate((section, owner.name, "renamed_from", i)))
    for kind, pairs in ((Kind.STATUS, plan.retired.statuses), (Kind.TIER, plan.retired.tiers)):
        section = "statuses" if kind is Kind.STATUS else "tiers"
        for old, new in pairs:
            yield Move(kind, old, new, How.RETIRED, doc.key_location(("retired", section, old)))


@dataclass(frozen=True, slots=True)
class Stranded:
    """Stored subjects under a name the plan neither declares nor maps."""

    kind: Kind
    name: str
    count: int

    def describe(self) -> str:
        return f"{self.kind.value} '{self.name}': {self.count} stored subject(s)"

    def fix(self) -> str:
        section = "statuses" if self.kind is Kind.STATUS else "tiers"
        return (f"if '{self.name}' was renamed, add `renamed_from: [{self.name}]` to the {self.kind.value} that "
                f"replaces it; if it was removed, map it under `retired: {{{section}: {{{self.name}: <new "
                f"{self.kind.value}>}}}}`")

    def to_dict(self) -> dict:
        return {"kind": self.kind.value, "name": self.name, "count": self.count, "fix": self.fix()}


def stranded(plan: Plan, statuses: Mapping[str, int], tiers: Mapping[str | None, int]) -> list[Stranded]:
    """The stored names (with their subject counts) the plan neither declares nor maps."""
    names = NameMap.of(plan)
    known_statuses = {s.name for s in plan.statuses} | set(names.statuses)
    known_tiers = {t.name for t in plan.tiers} | set(names.tiers)
    out = [Stranded(Kind.STATUS, name, n) for name, n in sorted(statuses.items())
           if n and name not in known_statuses]
    out += [Stranded(Kind.TIER, name, n) for name, n in sorted(tiers.items(), key=lambda kv: str(kv[0]))
            if n and name is not None and name not in known_tiers]
    return out


def explain_stranded(found: list[Stranded], file: str) -> str:
    """What `serve` (or a reload) says when a plan strands stored subjects: each name, its count, the fix."""
    lines = [f"{file} strands stored subjects: their names are neither in the plan nor mapped"]
    lines += [f"  {s.describe()}" for s in found]
    lines += ["fix:"] + [f"  {s.fix()}" for s in found]
    lines.append(f"then `plangate diff <deployed plan> {file} --database <PLANGATE_DATABASE>` shows what the "
                 "change does to stored subjects")
    return "\n".join(lines)
