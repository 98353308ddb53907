"""The store's record of plans: every version the gate has run, every deploy of one, and how many stored
subjects stand under each status, tier and version (what a new plan is checked against before it runs)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PlanRecord:
    """A plan version as the store keeps it: the document it was read from."""

    version: str
    sha256: str          # of the document's text
    file: str
    document: str
    first_run: float
    superseded: float | None = None     # when it last stopped being the active plan (None: it never did)


@dataclass(frozen=True, slots=True)
class Deploy:
    """One deploy of a plan version: the newest is the active plan."""

    id: int
    version: str
    previous: str | None
    at: float
    actor: str
    node: str
    summary: str
    moved: int = 0

    def to_dict(self) -> dict:
        return {"version": self.version, "previous": self.previous, "at": self.at, "actor": self.actor,
                "node": self.node, "summary": self.summary, "moved": self.moved}


@dataclass(frozen=True)
class Census:
    """Stored subjects counted by (status, tier, plan version)."""

    rows: tuple[tuple[str, str | None, str, int], ...]

    def _by(self, column: int) -> dict:
        out: dict = {}
        for row in self.rows:
            out[row[column]] = out.get(row[column], 0) + row[3]
        return out

    @property
    def statuses(self) -> dict[str, int]:
        return self._by(0)

    @property
    def tiers(self) -> dict[str | None, int]:
        return self._by(1)

    @property
    def versions(self) -> dict[str, int]:
        return self._by(2)

    @property
    def total(self) -> int:
        return sum(row[3] for row in self.rows)


DEPLOY_COLUMNS = "id, version, previous, at, actor, node, summary, moved"
PLAN_COLUMNS = "version, sha256, file, document, first_run"
# A version read back: its columns, and when the newest deploy that replaced it ran.
PLAN_READ = (f"{PLAN_COLUMNS}, (SELECT max(d.at) FROM plan_deploys AS d WHERE d.previous = plan_versions.version) "
             "AS superseded")
CENSUS = "SELECT status, tier, plan_version, count(*) FROM subscriptions GROUP BY status, tier, plan_version"


def deploy_from_row(r) -> Deploy:
    return Deploy(*r)


def plan_from_row(r) -> PlanRecord:
    return PlanRecord(*r)
