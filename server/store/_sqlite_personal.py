"""SQLiteStore's retention and erasure (the SQL is _personal's).

Rewritten rows must not survive elsewhere in the file: every connection runs with secure_delete on (the space a
row leaves is zeroed), and after a reduction or an erasure the WAL, which still holds the pages as they were, is
checkpointed and cut to nothing (scrub). A store that had payloads before secure_delete was on is compacted once.
"""
from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _personal as sql
from ._base import Erasure, EventRecord, StoreError
from ._rows import event_from_row


class SQLitePersonalData:
    """Mixed into SQLiteStore: uses its _write_whole, _rows, write lock and writer connection."""

    if TYPE_CHECKING:       # SQLiteStore's
        from ._sqlite_connections import ThreadConnection
        _open: bool
        _write_lock: asyncio.Lock
        _writer: ThreadConnection

        async def _rows(self, sql: str, params) -> list: ...
        async def _write_whole(self, fn: Callable[..., Any], *args: Any, on_loop: bool = False) -> Any: ...

    async def unreduced(self, before: float, after: tuple[float, str] | None, limit: int) -> list[EventRecord]:
        rows = await self._rows(sql.UNREDUCED, sql.unreduced_args(before, after, limit))
        return [event_from_row(r) for r in rows]

    async def reduce_payloads(self, payloads: list[tuple[str, str]], at: float) -> int:
        def write(db: sqlite3.Connection) -> int:
            db.executemany(sql.REDUCE, [(payload, at, event_id) for event_id, payload in payloads])
            return len(payloads)
        return await self._write_whole(write) if payloads else 0

    async def personal_rows(self, subject: str, customer: str | None,
                            subscription: str | None) -> tuple[list[EventRecord], list[str], list[str], list[str]]:
        events = await self._rows(sql.PERSONAL_EVENTS, sql.personal_events_args(subject, customer, subscription))
        invoices = await self._rows(sql.PERSONAL_INVOICES, (subject, customer, subscription))
        grants = await self._rows(sql.PERSONAL_GRANTS, (subject,))
        ids = await self._rows(sql.PERSONAL_CREDIT_IDS, (subject,) * 4)
        return sql.personal_events(events), [r[0] for r in invoices], [r[0] for r in grants], [r[0] for r in ids]

    async def erase(self, erasure: Erasure) -> bool:
        def write(db: sqlite3.Connection) -> bool:
            query, args = sql.version_check(erasure)
            row = db.execute(query, args).fetchone()
            if (row[0] if row else 0) != erasure.expected_version:
                return False
            for statement, values in sql.erasure_statements(erasure):
                db.execute(statement, values)
            return True
        return await self._write_whole(write)

    async def erased(self, pseudonym: str) -> bool:
        return bool(await self._rows(sql.ERASED, (pseudonym,)))

    async def erasures_keeping_ids(self, limit: int, after: str = "") -> list[str]:
        return [r[0] for r in await self._rows(sql.KEEPING_IDS, (after, limit))]

    async def scrub(self) -> bool:
        # A reader in the middle of a statement keeps the checkpoint from cutting the WAL (busy): a few tries.
        for pause in (0.0, 0.01, 0.05, 0.2, 1.0):
            await asyncio.sleep(pause)
            (busy, _, _), = await self._outside_transaction("PRAGMA wal_checkpoint(TRUNCATE)")
            if not busy:
                return True
        return False

    async def compact(self) -> None:
        await self._outside_transaction("VACUUM")
        await self.scrub()

    async def _outside_transaction(self, statement: str) -> list:
        """A statement that cannot run in a transaction, on the writer's thread, between its transactions."""
        if not self._open:
            raise StoreError("the store is not open")
        async with self._write_lock:
            try:
                return await self._writer.fetch_all(statement)
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite: {statement}: {exc}") from exc
