"""PostgresStore's record of plans (_plans.py). A deploy is announced to every node in its transaction
(NOTIFY plangate_plans, payload: the version), as a subject's change is (plangate_subjects)."""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from ._base import StoredSubject
from ._plans import (CENSUS, DEPLOY_COLUMNS, PLAN_COLUMNS, PLAN_READ, Census, Deploy, PlanRecord, deploy_from_row,
                     plan_from_row)
from ._rows import SUBJECT_COLUMNS, subject_from_row

PLAN_CHANNEL = "plangate_plans"


class PostgresPlans:
    """Mixed into PostgresStore: uses its _conn and _tx."""

    if TYPE_CHECKING:       # PostgresStore's
        def _conn(self, timeout: float | None = None) -> contextlib.AbstractAsyncContextManager[Any]: ...
        def _tx(self, timeout: float | None = None) -> contextlib.AbstractAsyncContextManager[Any]: ...

    async def census(self) -> Census:
        async with self._conn() as db:
            rows = await db.fetch(CENSUS)
        return Census(tuple(tuple(r) for r in rows))

    async def record_deploy(self, plan: PlanRecord, deploy: Deploy) -> Deploy:
        async with self._tx() as db:
            await db.execute(f"INSERT INTO plan_versions ({PLAN_COLUMNS}) VALUES ($1, $2, $3, $4, $5) "
                             "ON CONFLICT (version) DO NOTHING",
                             plan.version, plan.sha256, plan.file, plan.document, plan.first_run)
            deploy_id = await db.fetchval(
                "INSERT INTO plan_deploys (version, previous, at, actor, node, summary, moved) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id", deploy.version, deploy.previous, deploy.at,
                deploy.actor, deploy.node, deploy.summary, deploy.moved)
            await db.execute("SELECT pg_notify($1, $2)", PLAN_CHANNEL, deploy.version)
        return Deploy(deploy_id, deploy.version, deploy.previous, deploy.at, deploy.actor, deploy.node,
                      deploy.summary, deploy.moved)

    async def deploy_moved(self, deploy_id: int, moved: int) -> None:
        async with self._conn() as db:
            await db.execute("UPDATE plan_deploys SET moved = $1 WHERE id = $2", moved, deploy_id)

    async def deploys(self, limit: int = 50) -> list[Deploy]:
        async with self._conn() as db:
            rows = await db.fetch(f"SELECT {DEPLOY_COLUMNS} FROM plan_deploys ORDER BY id DESC LIMIT $1", limit)
        return [deploy_from_row(r) for r in rows]

    async def plan_versions(self, versions: tuple[str, ...]) -> dict[str, PlanRecord]:
        async with self._conn() as db:
            rows = await db.fetch(f"SELECT {PLAN_READ} FROM plan_versions WHERE version = ANY($1::text[])",
                                  list(versions))
        return {r[0]: plan_from_row(r) for r in rows}

    async def subjects_named(self, statuses: tuple[str, ...], tiers: tuple[str, ...], limit: int,
                             skip: tuple[str, ...] = (), *, subscriptions: bool = False) -> list[StoredSubject]:
        theirs = (" OR EXISTS (SELECT 1 FROM json_array_elements(stripe_subscriptions::json) AS s "
                  "WHERE s->>'tier' = ANY($2::text[]))") if subscriptions else ""
        async with self._conn() as db:
            rows = await db.fetch(
                f"SELECT {SUBJECT_COLUMNS} FROM subscriptions WHERE (status = ANY($1::text[]) OR "
                f"tier = ANY($2::text[]){theirs}) AND NOT subject = ANY($3::text[]) LIMIT $4",
                list(statuses), list(tiers), list(skip), limit)
        return [subject_from_row(r) for r in rows]

    async def subjects_on(self, versions: tuple[str, ...], limit: int, after: str = "") -> list[StoredSubject]:
        async with self._conn() as db:
            rows = await db.fetch(
                f"SELECT {SUBJECT_COLUMNS} FROM subscriptions WHERE plan_version = ANY($1::text[]) AND subject > $2 "
                "ORDER BY subject LIMIT $3", list(versions), after, limit)
        return [subject_from_row(r) for r in rows]
