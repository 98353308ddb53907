"""PostgresStore's retention and erasure (the SQL is _personal's, numbered for PostgreSQL). An erasure NOTIFYs
the subject and its pseudonym: every node drops both from its cache."""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from . import _personal as sql
from ._base import Erasure, EventRecord
from ._rows import event_from_row

_UNREDUCED, _REDUCE = sql.numbered(sql.UNREDUCED), sql.numbered(sql.REDUCE)
_PERSONAL_EVENTS, _PERSONAL_INVOICES = sql.numbered(sql.PERSONAL_EVENTS), sql.numbered(sql.PERSONAL_INVOICES)
_PERSONAL_GRANTS = sql.numbered(sql.PERSONAL_GRANTS)
_PERSONAL_CREDIT_IDS = sql.numbered(sql.PERSONAL_CREDIT_IDS)
_ERASED, _KEEPING_IDS = sql.numbered(sql.ERASED), sql.numbered(sql.KEEPING_IDS)


class PostgresPersonalData:
    """Mixed into PostgresStore: uses its _conn, _tx and channel."""

    if TYPE_CHECKING:       # PostgresStore's
        channel: str

        def _conn(self, timeout: float | None = None) -> contextlib.AbstractAsyncContextManager[Any]: ...
        def _tx(self, timeout: float | None = None) -> contextlib.AbstractAsyncContextManager[Any]: ...

    async def unreduced(self, before: float, after: tuple[float, str] | None, limit: int) -> list[EventRecord]:
        async with self._conn() as db:
            rows = await db.fetch(_UNREDUCED, *sql.unreduced_args(before, after, limit))
        return [event_from_row(r) for r in rows]

    async def reduce_payloads(self, payloads: list[tuple[str, str]], at: float) -> int:
        if not payloads:
            return 0
        async with self._tx() as db:
            await db.executemany(_REDUCE, [(payload, at, event_id) for event_id, payload in payloads])
        return len(payloads)

    async def personal_rows(self, subject: str, customer: str | None,
                            subscription: str | None) -> tuple[list[EventRecord], list[str], list[str], list[str]]:
        async with self._conn() as db:
            events = await db.fetch(_PERSONAL_EVENTS, *sql.personal_events_args(subject, customer, subscription))
            invoices = await db.fetch(_PERSONAL_INVOICES, subject, customer, subscription)
            grants = await db.fetch(_PERSONAL_GRANTS, subject)
            ids = await db.fetch(_PERSONAL_CREDIT_IDS, subject, subject, subject, subject)
        return sql.personal_events(events), [r[0] for r in invoices], [r[0] for r in grants], [r[0] for r in ids]

    async def erase(self, erasure: Erasure) -> bool:
        query, args = sql.version_check(erasure)
        async with self._tx() as db:
            # The subject's row locked while the erasure is written: a count or a fold on it waits, then finds
            # its version gone and reads again.
            version = await db.fetchval(sql.numbered(query) + " FOR UPDATE", *args) or 0
            if version != erasure.expected_version:
                return False
            for statement, values in sql.erasure_statements(erasure):
                await db.execute(sql.numbered(statement), *values)
            for subject in {erasure.subject, erasure.pseudonym}:
                await db.execute("SELECT pg_notify($1, $2)", self.channel, subject)
        return True

    async def erased(self, pseudonym: str) -> bool:
        async with self._conn() as db:
            return bool(await db.fetchval(_ERASED, pseudonym))

    async def erasures_keeping_ids(self, limit: int, after: str = "") -> list[str]:
        async with self._conn() as db:
            return [r[0] for r in await db.fetch(_KEEPING_IDS, after, limit)]
