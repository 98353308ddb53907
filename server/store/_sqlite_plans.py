"""SQLiteStore's record of plans (_plans.py). What reads every subject (the census, the search for old names
and old versions) runs on the writer's thread, as the reconciliation's search does: the loop keeps serving."""
from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._base import StoredSubject
from ._plans import (CENSUS, DEPLOY_COLUMNS, PLAN_COLUMNS, PLAN_READ, Census, Deploy, PlanRecord, deploy_from_row,
                     plan_from_row)
from ._rows import SUBJECT_COLUMNS, subject_from_row


def _marks(values) -> str:
    return ", ".join("?" for _ in values) or "NULL"


class SQLitePlans:
    """Mixed into SQLiteStore: uses its _rows (a read on the loop), _scan (a read on the writer's thread) and
    _write_whole (a write transaction)."""

    if TYPE_CHECKING:       # SQLiteStore's
        async def _rows(self, sql: str, params) -> list: ...
        async def _scan(self, sql: str, params) -> list: ...
        async def _write_whole(self, fn: Callable[..., Any], *args: Any, on_loop: bool = False) -> Any: ...

    async def census(self) -> Census:
        return Census(tuple(tuple(r) for r in await self._scan(CENSUS, ())))

    async def record_deploy(self, plan: PlanRecord, deploy: Deploy) -> Deploy:
        return await self._write_whole(_record_deploy, plan, deploy)

    async def deploy_moved(self, deploy_id: int, moved: int) -> None:
        await self._write_whole(_deploy_moved, deploy_id, moved)

    async def deploys(self, limit: int = 50) -> list[Deploy]:
        rows = await self._rows(f"SELECT {DEPLOY_COLUMNS} FROM plan_deploys ORDER BY id DESC LIMIT ?", (limit,))
        return [deploy_from_row(r) for r in rows]

    async def plan_versions(self, versions: tuple[str, ...]) -> dict[str, PlanRecord]:
        rows = await self._rows(f"SELECT {PLAN_READ} FROM plan_versions WHERE version IN ({_marks(versions)})",
                                versions)
        return {r[0]: plan_from_row(r) for r in rows}

    async def subjects_named(self, statuses: tuple[str, ...], tiers: tuple[str, ...], limit: int,
                             skip: tuple[str, ...] = (), *, subscriptions: bool = False) -> list[StoredSubject]:
        skipped = f" AND subject NOT IN ({_marks(skip)})" if skip else ""     # NOT IN (NULL) would hold for none
        theirs = (f" OR EXISTS (SELECT 1 FROM json_each(stripe_subscriptions) AS s WHERE "
                  f"json_extract(s.value, '$.tier') IN ({_marks(tiers)}))") if subscriptions else ""
        rows = await self._scan(
            f"SELECT {SUBJECT_COLUMNS} FROM subscriptions WHERE (status IN ({_marks(statuses)}) OR "
            f"tier IN ({_marks(tiers)}){theirs}){skipped} LIMIT ?",
            (*statuses, *tiers, *(tiers if subscriptions else ()), *skip, limit))
        return [subject_from_row(r) for r in rows]

    async def subjects_on(self, versions: tuple[str, ...], limit: int, after: str = "") -> list[StoredSubject]:
        rows = await self._scan(
            f"SELECT {SUBJECT_COLUMNS} FROM subscriptions WHERE plan_version IN ({_marks(versions)}) AND subject > ? "
            "ORDER BY subject LIMIT ?", (*versions, after, limit))
        return [subject_from_row(r) for r in rows]


def _record_deploy(db: sqlite3.Connection, plan: PlanRecord, deploy: Deploy) -> Deploy:
    db.execute(f"INSERT INTO plan_versions ({PLAN_COLUMNS}) VALUES (?, ?, ?, ?, ?) ON CONFLICT (version) DO NOTHING",
               (plan.version, plan.sha256, plan.file, plan.document, plan.first_run))
    cursor = db.execute("INSERT INTO plan_deploys (version, previous, at, actor, node, summary, moved) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)", (deploy.version, deploy.previous, deploy.at, deploy.actor,
                                                        deploy.node, deploy.summary, deploy.moved))
    return Deploy(cursor.lastrowid or 0, deploy.version, deploy.previous, deploy.at, deploy.actor, deploy.node,
                  deploy.summary, deploy.moved)


def _deploy_moved(db: sqlite3.Connection, deploy_id: int, moved: int) -> None:
    db.execute("UPDATE plan_deploys SET moved = ? WHERE id = ?", (moved, deploy_id))
