"""PostgresStore's credits and overage reports (the SQL is _credits', numbered). A spend is one call of
plangate_spend (migrations entitlements and overage_billed): atomic across nodes, one round trip."""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from plangate.engine._credits import Grant
from plangate.engine._reversals import MoneyBack

from . import _credits as sql
from ._base import Counted, IdempotencyConflict, StoredSubject, UsageCeiling
from ._credits import OverageReport, Reversal, Spend
from ._personal import numbered

_SPEND = ("SELECT * FROM plangate_spend($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, "
          "$17)")
_INSERT_GRANT = numbered(sql.INSERT_GRANT)
_REDATE = numbered(sql.REDATE_GRANT)
_GRANTS = numbered(sql.GRANTS)
_GRANT = numbered(sql.GRANT)
_RECENT = numbered(sql.RECENT_GRANTS)
_DUE = numbered(sql.DUE_REPORTS)
_UPDATE = numbered(sql.UPDATE_REPORT)
_BY_SUBJECT = numbered(sql.SUBJECT_REPORTS)
_BY_STATUS = numbered(sql.REPORTS_BY_STATUS)
_SENT = numbered(sql.sent_totals("floor({} / 60)"))
_INSERT_REVERSAL = numbered(sql.INSERT_REVERSAL)
_PAYMENT_GRANTS = numbered(sql.PAYMENT_GRANTS) + " FOR UPDATE"
_PAYMENT_REVERSALS = numbered(sql.PAYMENT_REVERSALS)
_TAKE_BACK = numbered(sql.TAKE_BACK)
_REVERSALS = numbered(sql.SUBJECT_REVERSALS)


class PostgresCredits:
    """Mixed into PostgresStore: uses its _conn and _tx, _insert_subject for a subject not stored yet, and
    announce_usage (a spend is announced on plangate_usage as a count is)."""

    if TYPE_CHECKING:       # PostgresStore's
        channel: str
        announce_usage: bool

        def _conn(self, timeout: float | None = None) -> contextlib.AbstractAsyncContextManager[Any]: ...
        def _tx(self, timeout: float | None = None) -> contextlib.AbstractAsyncContextManager[Any]: ...
        async def _insert_subject(self, db: Any, current: StoredSubject, now: float) -> int: ...
        def _changed(self, *subjects: str) -> None: ...

    async def spend(self, current: StoredSubject, meter: str, window_start: int, amount: int, spend: Spend,
                    key: str | None, now: float) -> Counted:
        subject = current.state.subject
        args = (subject, meter, window_start, amount, spend.limit, spend.ceiling, spend.cap, spend.credits,
                spend.which.not_before, spend.which.tier_grants, key, now)
        report = (spend.report, spend.report_id, spend.customer)
        try:
            async with self._tx() as db:
                if spend.redates:
                    await db.executemany(_REDATE, [(expiry, subject, grant) for grant, expiry in spend.redates])
                if spend.grants:
                    await db.executemany(_INSERT_GRANT, [sql.grant_values(subject, g, None) for g in spend.grants])
                version = current.version or await self._insert_subject(db, current, now)
                row = await db.fetchrow(_SPEND, *args, version, *report, self.announce_usage)
                if row[0] != "counted":
                    raise _Undo(row)
        except _Undo as undo:
            row = undo.row
        if row[0] not in ("refused", "repeat", "ceiling"):
            self._changed(subject)      # written (or tried on a version maybe read from a replica), as a count
        return _counted(row, subject, meter, amount, key)

    async def grants(self, subject: str, now: float) -> list[Grant]:
        async with self._conn() as db:
            rows = await db.fetch(_GRANTS, *sql.grants_args(subject, now))
        return [sql.grant_from_row(r) for r in rows]

    async def grant(self, subject: str, grant_id: str) -> Grant | None:
        async with self._conn() as db:
            row = await db.fetchrow(_GRANT, subject, grant_id)
        return None if row is None else sql.grant_from_row(row)

    async def recent_grants(self, subject: str, limit: int = 50) -> list[Grant]:
        async with self._conn() as db:
            rows = await db.fetch(_RECENT, subject, limit)
        return [sql.grant_from_row(r) for r in rows]

    async def add_grants(self, subject: str, grants: tuple[Grant, ...], actor: str | None) -> int:
        if not grants:
            return 0
        made = 0
        async with self._tx() as db:
            for g in grants:
                made += int((await db.execute(_INSERT_GRANT, *sql.grant_values(subject, g, actor))).split()[-1])
            await db.execute("SELECT pg_notify($1, $2)", self.channel, subject)
        return made

    async def recent_reversals(self, subject: str, limit: int = 200) -> list[Reversal]:
        async with self._conn() as db:
            rows = await db.fetch(_REVERSALS, subject, limit)
        return [sql.reversal_from_row(r) for r in rows]

    @staticmethod
    async def take_back(db, subject: str, reversals: tuple[MoneyBack, ...], grants: tuple[Grant, ...]) -> None:
        """In a commit's transaction: its facts of money back recorded, and what they (and those recorded before)
        take of the grants of their payments and of its new grants taken. The payment's grants are locked first,
        as a spend locks those it takes from."""
        if reversals:
            await db.executemany(_INSERT_REVERSAL, [sql.fact_values(subject, f) for f in reversals])
        for payment in sql.reversal_payments(reversals, grants):
            found = await db.fetch(_PAYMENT_GRANTS, subject, payment)
            rows = await db.fetch(_PAYMENT_REVERSALS, subject, payment)
            inserts, takes = sql.settle_payment(subject, payment, [tuple(r) for r in found], [tuple(r) for r in rows])
            if inserts:
                await db.executemany(_INSERT_REVERSAL, inserts)
            if takes:
                await db.executemany(_TAKE_BACK, takes)

    async def overage_due(self, now: float, limit: int) -> list[OverageReport]:
        async with self._conn() as db:
            rows = await db.fetch(_DUE, now, limit)
        return [sql.report_from_row(r) for r in rows]

    async def update_reports(self, reports: list[OverageReport]) -> None:
        if reports:
            async with self._tx() as db:
                await db.executemany(_UPDATE, [sql.report_update(r) for r in reports])

    async def overage_reports(self, subject: str | None, status: str | None, limit: int = 100) -> list[OverageReport]:
        query, arg = (_BY_SUBJECT, subject) if subject is not None else (_BY_STATUS, status)
        async with self._conn() as db:
            rows = await db.fetch(query, arg, limit)
        return [sql.report_from_row(r) for r in rows]

    async def resend_refused(self, filters: dict[str, str], since: float, now: float, note: str, limit: int) -> int:
        update, args = sql.resend_refused(filters, since, now, note, limit)
        async with self._tx() as db:
            done = await db.execute(numbered(update), *args)
        return int(done.split()[-1])        # "UPDATE n"

    async def refused_kept(self, filters: dict[str, str], since: float) -> tuple[int, int]:
        kept, args = sql.refused_kept(filters, since)
        async with self._conn() as db:
            old, conflicts = await db.fetchrow(numbered(kept), *args)
        return int(old), int(conflicts)

    async def overage_counts(self) -> dict[str, tuple[int, int]]:
        async with self._conn() as db:
            rows = await db.fetch(sql.REPORT_COUNTS)
        return {r[0]: (int(r[1]), int(r[2])) for r in rows}

    async def overage_sent(self, start: float, end: float, settled: float) \
            -> list[tuple[str, str, int, float | None]]:
        async with self._conn() as db:
            rows = await db.fetch(_SENT, settled, start, end, start, end)
        return [(r[0], r[1], int(r[2]), r[3]) for r in rows]


class _Undo(Exception):
    """Leave the spend's transaction by rolling it back (a refusal or conflict writes nothing, a new subject's row
    included), with plangate_spend's row to answer with."""

    def __init__(self, row):
        self.row = row


def _counted(row, subject: str, meter: str, amount: int, key: str | None) -> Counted:
    outcome, used, seen_subject, seen_meter, seen_amount, spent, over, balance, billed = row
    if outcome == "repeat":
        if (seen_subject, seen_meter, seen_amount) != (subject, meter, amount):
            raise IdempotencyConflict(
                f"idempotency key {key!r} was first used for subject {seen_subject!r}, meter {seen_meter!r}, "
                f"amount {seen_amount}; use a new key for different work")
        return Counted(True, used, duplicate=True, credits_used=spent, overage=over)
    if outcome == "ceiling":        # rolled back (migration usage_ceiling)
        raise UsageCeiling(used, amount)
    return Counted(outcome == "counted", used, conflict=outcome == "conflict", credits_used=spent, overage=over,
                   balance=balance, billed=billed)

