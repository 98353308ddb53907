"""SQLiteStore's credits and overage reports (the SQL is _credits'). A spend is a write of its own in the group
commit, as a count is: the key, the window, the grants and the report in one transaction."""
from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from collections.abc import Awaitable

from plangate.engine._credits import Grant, spendable_grants, spending_order
from plangate.engine._decision import MOST
from plangate.engine._entitlements import billable

from . import _credits as sql
from . import _sqlite_queries as queries
from ._base import USAGE_CEILING, Counted, IdempotencyConflict, StoredSubject, UsageCeiling
from ._credits import OverageReport, Reversal, Spend
from ._sqlite_transactions import Undone

if TYPE_CHECKING:
    from ._sqlite_transactions import GroupCommit


_SENT = sql.sent_totals("CAST({} / 60 AS INTEGER)")


class SQLiteCredits:
    """Mixed into SQLiteStore: uses its group commit (_groups), _rows, _scan and _write_whole."""

    if TYPE_CHECKING:       # SQLiteStore's
        _groups: GroupCommit
        _commits_on_loop: bool

        async def _rows(self, sql: str, params) -> list: ...
        async def _scan(self, sql: str, params) -> list: ...
        async def _write_whole(self, fn: Callable[..., Any], *args: Any, on_loop: bool = False) -> Any: ...

    def spend(self, current: StoredSubject, meter: str, window_start: int, amount: int, spend: Spend,
              key: str | None, now: float) -> Awaitable[Counted]:
        return self._groups.add(_spend, current, meter, window_start, amount, spend, key, now)

    async def grants(self, subject: str, now: float) -> list[Grant]:
        return [sql.grant_from_row(r) for r in await self._rows(sql.GRANTS, sql.grants_args(subject, now))]

    async def grant(self, subject: str, grant_id: str) -> Grant | None:
        rows = await self._rows(sql.GRANT, (subject, grant_id))
        return sql.grant_from_row(rows[0]) if rows else None

    async def recent_grants(self, subject: str, limit: int = 50) -> list[Grant]:
        return [sql.grant_from_row(r) for r in await self._rows(sql.RECENT_GRANTS, (subject, limit))]

    async def add_grants(self, subject: str, grants: tuple[Grant, ...], actor: str | None) -> int:
        def write(db: sqlite3.Connection) -> int:
            return queries.insert_grants(db, subject, grants, actor)
        return await self._write_whole(write, on_loop=self._commits_on_loop) if grants else 0

    async def recent_reversals(self, subject: str, limit: int = 200) -> list[Reversal]:
        return [sql.reversal_from_row(r) for r in await self._rows(sql.SUBJECT_REVERSALS, (subject, limit))]

    async def overage_due(self, now: float, limit: int) -> list[OverageReport]:
        return [sql.report_from_row(r) for r in await self._rows(sql.DUE_REPORTS, (now, limit))]

    async def update_reports(self, reports: list[OverageReport]) -> None:
        def write(db: sqlite3.Connection) -> None:
            db.executemany(sql.UPDATE_REPORT, [sql.report_update(r) for r in reports])
        if reports:
            await self._write_whole(write, on_loop=self._commits_on_loop)

    async def overage_reports(self, subject: str | None, status: str | None, limit: int = 100) -> list[OverageReport]:
        query, arg = (sql.SUBJECT_REPORTS, subject) if subject is not None else (sql.REPORTS_BY_STATUS, status)
        return [sql.report_from_row(r) for r in await self._rows(query, (arg, limit))]

    async def resend_refused(self, filters: dict[str, str], since: float, now: float, note: str, limit: int) -> int:
        update, args = sql.resend_refused(filters, since, now, note, limit)

        def write(db: sqlite3.Connection) -> int:
            return db.execute(update, args).rowcount
        return await self._write_whole(write, on_loop=self._commits_on_loop)

    async def refused_kept(self, filters: dict[str, str], since: float) -> tuple[int, int]:
        (old, conflicts), = await self._rows(*sql.refused_kept(filters, since))
        return int(old), int(conflicts)

    async def overage_counts(self) -> dict[str, tuple[int, int]]:
        return {status: (count, total) for status, count, total in await self._rows(sql.REPORT_COUNTS, ())}

    async def overage_sent(self, start: float, end: float, settled: float) \
            -> list[tuple[str, str, int, float | None]]:
        # A day of every customer's reports: on the writer's thread, not the loop's (SQLite lets go of the GIL).
        return [tuple(r) for r in await self._scan(_SENT, (settled, start, end, start, end))]


def _spend(db: sqlite3.Connection, current: StoredSubject, meter: str, window_start: int, amount: int, spend: Spend,
           key: str | None, now: float) -> Counted:
    """SQLiteStore.spend's transaction (what plangate_spend does on PostgreSQL)."""
    subject = current.state.subject
    if key is not None:
        seen = db.execute("SELECT subject, meter, amount, used_after, credits_used, overage FROM usage_keys "
                          "WHERE key = ?", (key,)).fetchone()
        if seen:
            if tuple(seen[:3]) != (subject, meter, amount):
                raise IdempotencyConflict(
                    f"idempotency key {key!r} was first used for subject {seen[0]!r}, meter {seen[1]!r}, "
                    f"amount {seen[2]}; use a new key for different work")
            return Counted(True, seen[3], duplicate=True, credits_used=seen[4], overage=seen[5])
    row = db.execute("SELECT version FROM subscriptions WHERE subject = ?", (subject,)).fetchone()
    made = current.version == 0 and row is None
    if made:
        db.execute(queries._INSERT_SUBJECT, queries._subject_params(current, now))
    elif row is None or row[0] != current.version:
        return Counted(False, 0, conflict=True)
    if spend.redates:
        db.executemany(sql.REDATE_GRANT, [(expiry, subject, grant) for grant, expiry in spend.redates])
    made = queries.insert_grants(db, subject, spend.grants, None) > 0 or made
    window = (subject, meter, window_start)
    found = db.execute("SELECT used, billed FROM quota_usage WHERE subject = ? AND meter = ? AND window_start = ?",
                       window).fetchone()
    used, billed = found if found else (0, 0)
    allow = min(amount, max(spend.limit - used, 0))
    rest = amount - allow
    grants = _spendable(db, subject, meter, spend, now) if spend.credits else []
    taken, spent = [], 0
    for grant in grants:
        if spent == rest:
            break
        take = min(grant.remaining, rest - spent)
        taken.append((take, subject, grant.id))
        spent += take
    over = rest - spent
    bill = billable(over, billed, spend.cap)
    held = sum(g.remaining for g in grants)
    balance = min(held - spent, MOST)       # what a balance says at the most, as plangate_balance on PostgreSQL
    # Work that adds nothing to the window's usage (within the limit, or paid by credits whole) is never past the
    # ceiling, however far past it usage counted by /v1/usage took the window.
    if spend.ceiling is not None and ((over and used + allow + over > spend.ceiling) or bill < over):
        refused = Counted(False, used, balance=min(held, MOST), billed=billed)
        if made:    # a new subject's row or the window's grants, made above: undone, as on PostgreSQL
            raise Undone(refused)
        # Nothing counted (tier grants' moved expiries stand: they are facts); no savepoint, no second run of
        # the group (the common refusal).
        return refused
    after = used + allow + over
    if after > USAGE_CEILING:
        raise UsageCeiling(used, amount)        # rolled back whole: the new subject's row, grants and expiries too
    if found:
        db.execute("UPDATE quota_usage SET used = ?, billed = ? WHERE subject = ? AND meter = ? AND window_start = ?",
                   (after, billed + bill, *window))
    else:
        db.execute("INSERT INTO quota_usage (subject, meter, window_start, used, billed) VALUES (?, ?, ?, ?, ?)",
                   (*window, after, bill))
    db.executemany("UPDATE credit_grants SET remaining = remaining - ? WHERE subject = ? AND grant_id = ?", taken)
    if bill and spend.report is not None:
        db.execute(sql.INSERT_REPORT, (spend.report_id, subject, meter, spend.report, bill, now, spend.customer, now))
    if key is not None:
        db.execute("INSERT INTO usage_keys (key, subject, meter, amount, window_start, used_after, created_at, "
                   "credits_used, overage) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (key, subject, meter, amount, window_start, after, now, spent, bill))
    return Counted(True, after, credits_used=spent, overage=bill, balance=balance, billed=billed + bill)


def _spendable(db: sqlite3.Connection, subject: str, meter: str, spend: Spend, now: float) -> list[Grant]:
    # With the tier's grants of a later window (spent or not): they close the earlier windows' (spendable_grants).
    rows = db.execute(f"SELECT {sql.GRANT_COLUMNS} FROM credit_grants WHERE subject = ? AND meter = ? AND "
                      "((remaining > 0 AND (expires_at IS NULL OR expires_at > ?)) OR "
                      "(source IN ('period', 'rollover') AND created_at > ?))", (subject, meter, now, now)).fetchall()
    return sorted(spendable_grants(map(sql.grant_from_row, rows), meter, now, spend.which), key=spending_order)
