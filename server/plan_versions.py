"""The plan the gate runs: which version, since when, and how it changes (at start, on SIGHUP or the admin
route, or when another node deploys one).

A plan is deployed only after it is checked against the store: its lint findings, then the stored statuses
and tiers it would strand (neither in it nor mapped). Refused, the old plan stays, with a log line that
says why. Accepted, the deploy is recorded (version, document, when, who, what changed), the new table
becomes the one every request reads (one assignment, compiled whole before), and stored subjects under old
names move once through the gate's door, audited as a plan change. On PostgreSQL the record announces the
version to every other node, which reads the same document from the store and switches to it.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import os
import socket
from dataclasses import dataclass, field
from typing import Any

from plangate.engine import StateTable, UnknownStatus, compile_plan
from plangate.policy import (Finding, NameMap, Plan, PlanDiff, PlanError, PlanFileError, Stranded, check_text,
                             diff_plans, explain_stranded, stranded, version_of)
from plangate.policy import read_plan_text as read_text

from .gate import Gate, StoreUnavailable
from .logs import log
from .store import AuditEntry, Change, StoreError
from .store._plans import Census, Deploy, PlanRecord

MIGRATE_BATCH = 250        # subjects under old names moved a transaction at a time, as the sweep commits timers
UPGRADE_PAGE = 500
HISTORY = 50
DEPLOYS_PAGE = 64          # deploys read at a time, newest first, looking for the versions stored subjects are on
# A stored state this node's plan does not know: ask the store for a newer plan, at most this often.
LOOK_AGAIN_AFTER = 5.0


class PlanRefused(Exception):
    """A plan was not deployed: its error findings, or the stored subjects it would strand."""

    def __init__(self, message: str, code: str, findings: tuple[Finding, ...] = (),
                 stranded: tuple[Stranded, ...] = ()):
        super().__init__(message)
        self.code, self.findings, self.stranded = code, findings, stranded

    def to_dict(self) -> dict:
        return {"error": self.code, "message": str(self), "findings": [f.to_dict() for f in self.findings],
                "stranded": [s.to_dict() for s in self.stranded]}


@dataclass(frozen=True)
class Reload:
    """What a deploy did: applied (a new version), unchanged (the version running already) or refused."""

    outcome: str
    version: str
    previous: str | None
    summary: str = ""
    changes: tuple[dict, ...] = ()
    moved: int = 0
    refused: PlanRefused | None = field(default=None)

    def to_dict(self) -> dict:
        body: dict[str, Any] = {"outcome": self.outcome, "version": self.version, "previous": self.previous,
                "summary": self.summary, "changes": list(self.changes), "moved": self.moved}
        if self.refused is not None:
            body["refused"] = self.refused.to_dict()
        return body


class PlanKeeper:
    """Deploys the plan file (at start and on reload), follows other nodes' deploys, keeps the history."""

    def __init__(self, gate: Gate, file: str):
        self.gate = gate
        self.store = gate.store
        self.file = file
        self.node = f"{socket.gethostname()}:{os.getpid()}"
        self.deployed_at = 0.0
        self.last: Reload | None = None
        self.follow_error: str | None = None     # an announced version this node could not load
        # (version, file, text) of the plan this node runs: a version is what a document says, so the text
        # recorded under it first may differ from this node's in comments, layout or path, and rules name lines.
        self.running: tuple[str, str, str] | None = None
        self._lock = asyncio.Lock()              # one deploy (or follow) at a time on this node
        self._tasks: set[asyncio.Task] = set()
        self._looked_again = 0.0
        gate.on_unknown_state = self._look_again
        gate.metrics.plan_version = gate.table.version

    # --- deploying ------------------------------------------------------------------------------

    async def start(self) -> Reload:
        """The plan file against the store before the gate serves: PlanRefused when it has errors or would
        strand stored subjects (serve then refuses to start, naming them, their counts and the fix)."""
        reload = await self.reload("start")
        if reload.refused is not None:
            raise reload.refused
        return reload

    async def reload(self, actor: str) -> Reload:
        """Read the plan file again and deploy it, or refuse and keep the running plan (logged either way)."""
        async with self._lock:
            try:
                reload = await self._deploy(read_text(self.file), actor)
            except PlanFileError as exc:
                reload = self._refused(PlanRefused(f"cannot read the plan: {exc}", "plan_unreadable"))
            except PlanRefused as exc:
                reload = self._refused(exc)
        self.last = reload
        self.gate.metrics.plan_reloads.labels(reload.outcome).inc()
        return reload

    def reload_soon(self, actor: str) -> None:
        """reload() in a task of its own (SIGHUP's handler cannot wait)."""
        self._spawn(self.reload(actor))

    def _refused(self, exc: PlanRefused) -> Reload:
        log(logging.ERROR, "plan_refused", file=self.file, reason=exc.code, message=str(exc),
            kept=self.gate.table.version)
        return Reload("refused", self.gate.table.version, self.gate.table.version, refused=exc)

    async def _deploy(self, text: str, actor: str) -> Reload:
        checked = check_text(text, self.file)
        if not checked.ok or checked.plan is None:
            errors = tuple(f for f in checked.findings if f.is_error)
            raise PlanRefused(str(PlanError(errors)) + f"\nfix them first (plangate lint {self.file})",
                              "plan_invalid", findings=errors)
        plan = checked.plan
        version = version_of(plan)
        # (`plangate serve` refuses to start on such a plan: a reload refuses to deploy it.)
        problem = self.gate.config.stripe_key_problem(plan) if actor != "start" else None
        if problem:
            raise PlanRefused(problem, "stripe_key_needed")
        # The store's check and the swap, once the state changes decided under the running plan have committed;
        # those that come meanwhile wait, and are decided under the plan deployed.
        async with self.gate.plan_swap.swapping():
            table, deploy, active, changes, summary = await self._check_and_swap(plan, version, text, actor)
        moved = await self.migrate_names(table)
        if deploy is not None and moved:
            await self._io(self.store.deploy_moved(deploy.id, moved))
        outcome = "applied" if deploy is not None else "unchanged"
        log(logging.INFO, "plan_" + outcome, version=version, previous=active.version if active else None,
            actor=actor, node=self.node, summary=summary, moved=moved, kept_versions=list(table.kept_versions))
        return Reload(outcome, version, active.version if active else None, summary,
                      tuple(c.to_dict() for c in changes.changes) if changes else (), moved)

    async def _check_and_swap(self, plan: Plan, version: str, text: str, actor: str) \
            -> tuple[StateTable, Deploy | None, Deploy | None, PlanDiff | None, str]:
        """PlanRefused when the plan would strand stored subjects; else the deploy recorded (None: the version
        runs already) and the plan swapped in. (table, deploy, the deploy before, changes, summary)"""
        census = await self._io(self.store.census())
        found = stranded(plan, census.statuses, census.tiers)
        if found:
            raise PlanRefused(explain_stranded(found, self.file), "plan_strands_subjects", stranded=tuple(found))
        active = await self._active()
        records = await self._io(self.store.plan_versions(await self._wanted(census, active, version)))
        previous = _plan_of(records.get(active.version)) if active else None
        changes = diff_plans(previous, plan) if previous is not None else None
        summary = changes.summary() if changes is not None else "first deploy of a plan recorded here"
        now = self.gate.clock()
        deploy = None
        if active is None or active.version != version:
            record = PlanRecord(version, hashlib.sha256(text.encode()).hexdigest(), self.file, text, now)
            deploy = await self._io(self.store.record_deploy(
                record, Deploy(0, version, active.version if active else None, now, actor, self.node, summary)))
        deployed_at = now if deploy is not None or active is None else active.at
        if deploy is not None and active is not None and active.version in records:
            # Read before this deploy was recorded: the version running until now stops being active now.
            records = {**records, active.version: dataclasses.replace(records[active.version], superseded=now)}
        table = _compile(plan, records, version, deployed_at,
                         {*census.versions, *((active.version,) if active else ())})
        self._use(table, deployed_at)
        self.running = (version, self.file, text)
        return table, deploy, active, changes, summary

    def _use(self, table: StateTable, deployed_at: float) -> None:
        self.gate.use(table)
        self.deployed_at = deployed_at
        self.gate.metrics.plan_version = table.version

    async def _active(self) -> Deploy | None:
        newest = await self._io(self.store.deploys(1))
        return newest[0] if newest else None

    async def _wanted(self, census: Census, active: Deploy | None, version: str) -> tuple[str, ...]:
        """The plan versions whose documents a deploy needs: the one running before, every one a stored subject is
        on (those may be kept on its tier quotas), and every one deployed since the oldest of those (a plan maps
        only the names of the one before it: a tier renamed twice is followed through the plan between)."""
        stored = {v for v in census.versions if v}
        wanted = stored | ({active.version} if active else set()) | {version}
        limit = DEPLOYS_PAGE
        while True:
            deploys = await self._io(self.store.deploys(limit))
            unseen, since = set(stored), set()
            for deploy in deploys:      # newest first, back to the deploy of the oldest version a subject is on
                if not unseen:
                    break
                since.add(deploy.version)
                unseen.discard(deploy.version)
            if not unseen or len(deploys) < limit:
                return tuple(sorted(wanted | since))
            limit *= 4

    async def _io(self, coro):
        """A store call of a deploy: a failing store refuses the deploy (the running plan stays)."""
        try:
            return await coro
        except (StoreError, OSError) as exc:
            raise PlanRefused(f"the store failed: {exc}", "store_unavailable") from exc

    # --- moving stored subjects ---------------------------------------------------------------------

    async def migrate_names(self, table: StateTable) -> int:
        """Move every stored subject under a name the plan renamed or retired (its own, or a tier one of its
        subscriptions has), once, a batch at a time (each subject that fails is logged and left; the gate's door
        moves it when it is next touched)."""
        names = NameMap.of(table.plan)
        if not names:
            return 0
        moved, skip = 0, set[str]()
        try:
            while True:
                batch = await self.gate.timed("plan_migrate", self.store.subjects_named(
                    tuple(names.statuses), tuple(names.tiers), MIGRATE_BATCH, tuple(skip), subscriptions=True),
                    timeout=30.0)
                if not batch:
                    return moved
                moved += await self._migrate_batch(table, batch, skip)
        except StoreUnavailable:
            # The plan is deployed already: the others move when the door, the sweep or the next deploy meets them.
            log(logging.ERROR, "plan_migrate_incomplete", moved=moved, why="the store failed; subjects still under "
                "old names are decided under the new ones and move when next written")
            return moved

    async def _migrate_batch(self, table: StateTable, batch, skip: set[str]) -> int:
        now = self.gate.clock()
        changes = []
        for stored in batch:
            try:
                o = table.migrate(stored.state, now)
            except UnknownStatus as exc:
                self._not_moved(stored.state.subject, exc, skip)
                continue
            if o is None:       # under plan names already (a tier the plan does not map is not its business)
                skip.add(stored.state.subject)
                continue
            audit = AuditEntry(o.state.subject, o.before.status, o.state.status, o.trigger, o.reason, now,
                               table.version, None, "plan")
            changes.append(Change(stored.with_state(o.state), stored.version, (audit,)))
        done = await self.gate.timed("plan_migrate", self.store.commit_batch(changes), shield=True, timeout=30.0,
                                     invalidates=lambda committed: committed) if changes else set()
        moved = 0
        for change in changes:
            subject = change.subject.state.subject
            if subject in done:
                self.gate.invalidate(subject)
                moved += 1
                continue
            try:    # changed meanwhile: through the door on its own
                moved += any(o.moved for o in await self.gate.migrate_subject(subject))
            except Exception as exc:    # noqa: BLE001 - one subject's failure stops no other
                self._not_moved(subject, exc, skip)
        for change in changes:
            audit = change.audits[0]
            if audit.subject in done:
                log(logging.INFO, "transition", subject=audit.subject, trigger="plan", from_status=audit.from_status,
                    to_status=audit.to_status, reason=audit.reason, actor="plan")
        self.gate.metrics.plan_moved.labels("renamed_or_retired").inc(moved)
        return moved

    def _not_moved(self, subject: str, exc: BaseException, skip: set[str]) -> None:
        skip.add(subject)
        log(logging.ERROR, "plan_migrate_failed", subject=subject, error=f"{type(exc).__name__}: {exc}")

    async def upgrade(self, *, tier: str | None, subjects: list[str] | None, why: str, actor: str) -> int:
        """Move subjects kept on older plan versions to the active one (all of them, those on a tier, or those
        named), each through the door with an audited plan change; how many moved."""
        table = self.gate.table
        moved = 0
        if subjects:
            for subject in subjects:
                moved += any(o.moved for o in await self.gate.upgrade_subject(subject, why, actor))
        elif table.kept_versions:
            after = ""
            while True:
                page = await self.gate.timed("plan_upgrade", self.store.subjects_on(table.kept_versions, UPGRADE_PAGE,
                                                                                     after), timeout=30.0)
                if not page:
                    break
                after = page[-1].state.subject
                now = self.gate.clock()
                for stored in page:
                    state = stored.state
                    if table.decided_under(state, now)[1] is None or (tier and table.tier_of(state) != tier):
                        continue
                    moved += any(o.moved for o in await self.gate.upgrade_subject(state.subject, why, actor))
        self.gate.metrics.plan_moved.labels("upgraded").inc(moved)
        log(logging.INFO, "plan_upgrade", moved=moved, tier=tier, subjects=len(subjects or ()), actor=actor, why=why)
        return moved

    # --- other nodes' deploys -----------------------------------------------------------------------

    def announced(self, version: str | None) -> None:
        """The store says a plan was deployed (None: it may have been, while this node was not listening)."""
        if version is None or version != self.gate.table.version:
            self._spawn(self.follow())

    def _look_again(self) -> None:
        now = self.gate.clock()
        if now - self._looked_again >= LOOK_AGAIN_AFTER:
            self._looked_again = now
            self._spawn(self.follow())

    async def follow(self) -> bool:
        """Switch to the store's active plan when another node deployed one; whether this node switched. A
        document this node cannot run (a lint error in its code version) is logged and shown by /readyz."""
        async with self._lock:
            try:
                active = await self._active()
                if active is None or active.version == self.gate.table.version:
                    return False
                census = await self._io(self.store.census())
                # The version this node ran until now too: a subject it wrote under it since the census was read.
                running = self.gate.table.version
                records = await self._io(self.store.plan_versions(await self._wanted(census, active, running)))
            except PlanRefused as exc:
                log(logging.ERROR, "plan_follow_failed", error=str(exc))
                return False
            plan = _plan_of(records.get(active.version))
            if plan is None:
                self.follow_error = f"plan version {active.version}, deployed by {active.node}, does not load here"
                log(logging.ERROR, "plan_follow_failed", version=active.version, error=self.follow_error)
                return False
            table = _compile(plan, records, active.version, active.at, {*census.versions, running})
            # As a deploy swaps: once the state changes this node is deciding under its plan have committed.
            async with self.gate.plan_swap.swapping():
                self._use(table, active.at)
            record = records[active.version]
            self.running = (active.version, record.file, record.document)
            self.follow_error = None
            self.gate.metrics.plan_reloads.labels("followed").inc()
            # A subject this node wrote under a name the plan renamed or retired, after the deploying node had
            # moved every stored one and before this node switched, is moved now (nobody else would until it is
            # written). Under the lock, as a deploy's: no newer plan swaps in while this one's names move.
            moved = await self.migrate_names(table)
        log(logging.INFO, "plan_followed", version=active.version, previous=active.previous, deployed_by=active.node,
            moved=moved)
        return True

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))

    # --- views -------------------------------------------------------------------------------------

    async def history(self) -> tuple[Deploy | None, PlanRecord | None, list[Deploy]]:
        """(the active deploy, its document, the newest deploys first)."""
        deploys = await self.gate.timed("plan_history", self.store.deploys(HISTORY), timeout=5.0)
        table = self.gate.table
        records = await self.gate.timed("plan_history", self.store.plan_versions((table.version,)), timeout=5.0)
        active = next((d for d in deploys if d.version == table.version), None)
        return active, records.get(table.version), deploys

    def readiness(self) -> dict:
        table = self.gate.table
        check = {"ok": self.follow_error is None, "version": table.version, "deployed_at": self.deployed_at or None,
                 "kept_versions": list(table.kept_versions), "node": self.node}
        if self.follow_error is not None:
            check["error"] = self.follow_error
        if self.last is not None and self.last.refused is not None:
            check["last_reload"] = {"outcome": "refused", "reason": self.last.refused.code}
        return check


def _plan_of(record: PlanRecord | None, *, runnable: bool = True) -> Plan | None:
    """The model of a stored document, or None: not stored, or not readable by this version of plangate (or,
    when it must be runnable, with an error finding; an older version lends only its tier quotas)."""
    if record is None:
        return None
    checked = check_text(record.document, record.file)
    return checked.plan if checked.ok or not runnable else None


def _compile(plan: Plan, records: dict[str, PlanRecord], version: str, deployed_at: float,
             on: set[str]) -> StateTable:
    """The table of `plan`: older versions `on` (a stored subject is on them, or one may be: the version that ran
    until a deploy) may keep their subscribers on their tier quotas; the versions between are read for the names
    their tiers had only (pinned, they would be listed as kept and compiled for nobody)."""
    plans = {v: p for v, p in ((v, _plan_of(r, runnable=False)) for v, r in records.items() if v != version)
             if p is not None}
    older = {v: p for v, p in plans.items() if v in on}
    superseded = {v: r.superseded for v, r in records.items() if v in older and r.superseded is not None}
    return compile_plan(plan, older, deployed_at, superseded, [p for v, p in plans.items() if v not in on])
