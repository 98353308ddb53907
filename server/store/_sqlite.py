"""The embedded store: one SQLite file in WAL mode.

Writes go one transaction at a time (SQLite has one writer anyway). Reads and the small writes of requests
(counts, webhook events) run on the event loop's own thread, on one connection: each is tens of microseconds
of SQLite's work on cached pages, less than handing it to a thread and back, and a second thread holding the
GIL made every hand-over a contended one (context switches cost a webhook event a third of its CPU). Reads
share the connection that writes, whose page cache its own commits keep (another connection's commit
empties it, and reads on a connection of their own were slower); the loop
runs a write transaction whole, so a read never sees one half done. So do the sweep's batches (the gate
keeps them to a few milliseconds each). What may take long runs on connections with threads of their own,
beside it (WAL): migrations, cleanup, checkpoints (they fsync), and every commit when synchronous is FULL
(each commit fsyncs). A transaction is handed to such a thread whole, in one call (ThreadConnection.run),
not a statement at a time.

This module says where each call runs; _sqlite_queries.py holds the SQL, _sqlite_transactions.py the
transactions and the group commit, _sqlite_connections.py the connections and checkpoints.
"""
from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from collections.abc import Awaitable

from . import _sqlite_queries as queries
from ._base import AuditEntry, Change, Counted, EventRecord, Payment, Store, StoreError, StoredSubject
from ._sqlite_connections import (CHECKPOINT_INTERVAL, Checkpointer, ThreadConnection, connect_on_loop, run_on_loop,
                                  sqlite_path)
from ._sqlite_file import StoreFile
from ._sqlite_personal import SQLitePersonalData
from ._sqlite_plans import SQLitePlans
from ._sqlite_credits import SQLiteCredits
from ._console_sessions import SQLiteConsoleSessions
from ._sqlite_transactions import GroupCommit, WriteFailed, group_still_wanted, run_group, transaction



class SQLiteStore(SQLiteCredits, SQLitePersonalData, SQLitePlans, SQLiteConsoleSessions, Store):
    def __init__(self, database: str, synchronous: str = "NORMAL", checkpoint_interval: float = CHECKPOINT_INTERVAL):
        self.path = sqlite_path(database)
        self.synchronous = synchronous
        self._checkpoints = Checkpointer(checkpoint_interval, self._checkpoint_on_writer)
        self._writer = ThreadConnection("writer")               # on a thread of its own: long writes
        self._open = False
        self._loop_db: sqlite3.Connection | None = None         # on the loop's thread: reads, small writes
        # Every commit fsyncs under FULL: those stay off the loop, on the writer's thread.
        self._commits_on_loop = synchronous.upper() != "FULL"
        self._write_lock = asyncio.Lock()
        self._groups = GroupCommit(self._commit_group, self._write_lock)
        self._file = StoreFile(self.path)       # deleted or moved under the gate; one gate per file

    # --- life cycle ----------------------------------------------------------------------------

    async def open(self) -> None:
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            await self._writer.open(self.path, self.synchronous)
            await self._writer.fetch_all("PRAGMA wal_autocheckpoint = 0")
            self._loop_db = connect_on_loop(self.path, self.synchronous)
            self._loop_db.execute("PRAGMA wal_autocheckpoint = 0")
            await self._checkpoints.open(self.path, self.synchronous)
            self._open = self._groups.open = True
            self._file.remember()
        except (sqlite3.Error, OSError) as exc:
            await self.close()
            raise StoreError(f"cannot open SQLite database {self.path}: {exc}") from exc

    async def _checkpoint_on_writer(self) -> None:
        """A checkpoint between the writer's transactions: SQLite starts the WAL over only after one."""
        async with self._write_lock:
            if self._open:
                await self._writer.fetch_all("PRAGMA wal_checkpoint(PASSIVE)")

    async def close(self) -> None:
        await self._checkpoints.close()
        await self._groups.drain()      # writes already queued are committed (or fail) first
        self._open = self._groups.open = False
        try:
            await self._writer.close()
        except sqlite3.Error:
            pass
        if self._loop_db is not None:
            try:
                self._loop_db.close()
            except sqlite3.Error:
                pass
            self._loop_db = None
        self._file.release()

    async def claim(self) -> None:
        self._file.claim()

    async def migrate(self) -> tuple[int, int]:
        return await self._write_whole(queries.migrate)

    async def ping(self) -> None:
        self._file.check()
        await self._read(queries.ping)

    # --- reads ---------------------------------------------------------------------------------

    def outside_writes(self) -> int | None:
        # SQLite's data_version of the loop's connection: it moves with every commit of any other connection
        # (the writer's thread: cleanup, erasure, FULL commits; another process: `plangate erase`), never with
        # the loop's own; about 1.6 µs.
        if self._loop_db is None:
            return None
        try:
            return self._loop_db.execute("PRAGMA data_version").fetchone()[0]
        except sqlite3.Error:
            return None

    async def load(self, subject: str) -> StoredSubject | None:
        return await self._read(queries.load, subject)

    async def used(self, subject: str, windows: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        if not windows:
            return {}
        return await self._read(queries.used, subject, windows)

    async def billed(self, subject: str, window: tuple[str, int]) -> int:
        return await self._read(queries.billed, subject, window)

    async def load_many(self, subjects: list[str], windows: list[tuple[str, str, int]]) \
            -> tuple[list[StoredSubject | None], dict[tuple[str, str, int], int]]:
        return await self._read(queries.load_many, subjects, windows)

    async def transitions(self, subject: str, limit: int = 20) -> list[AuditEntry]:
        return await self._read(queries.transitions, subject, limit)

    # --- writes --------------------------------------------------------------------------------

    # The writes of requests go in a group commit, which answers with a future (GroupCommit.add says why).

    def count(self, current: StoredSubject, meter: str, window_start: int, amount: int,
              limit: int | None, key: str | None, now: float) -> Awaitable[Counted]:
        return self._groups.add(queries.count, current, meter, window_start, amount, limit, key, now)

    def commit(self, change: Change) -> Awaitable[bool]:
        return self._groups.add(queries.commit, change)

    def withdraw(self, pending: asyncio.Future) -> bool:
        # A queued write is left out of its group once cancelled. On the loop's thread a group runs whole between
        # two turns of the loop, and one held back by a lock asks again which of its writes are still wanted
        # before each try: any of them can be withdrawn until it is done. One on the writer's thread cannot.
        return (self._commits_on_loop or self._groups.queued(pending)) and pending.cancel()

    def record_event(self, event: EventRecord, payments: tuple[Payment, ...] = ()) -> Awaitable[bool]:
        return self._groups.add(queries.record_event, event, payments)

    # --- what the webhook and the jobs look up ----------------------------------------------------

    async def event_seen(self, event_id: str) -> bool:
        return await self._read(queries.event_seen, event_id)

    async def find_subject(self, customer: str | None, subscription: str | None,
                           payments: tuple[str, ...] = ()) -> str | None:
        return await self._read(queries.find_subject, customer, subscription, payments)

    async def lookup(self, event_id: str, subject: str | None, customer: str | None,
                     subscription: str | None, payments: tuple[str, ...] = ()
                     ) -> tuple[bool, str | None, StoredSubject | None]:
        return await self._read(queries.lookup, event_id, subject, customer, subscription, payments)

    async def customer_shared(self, customer: str) -> bool:
        return await self._read(queries.customer_shared, customer)


    async def history(self, subject: str, since: float) -> list[EventRecord]:
        return await self._read(queries.history, subject, since)

    async def pending(self, customer: str | None, subscription: str | None,
                      payments: tuple[str, ...] = ()) -> list[EventRecord]:
        return await self._read(queries.pending, customer, subscription, payments)


    async def pending_linked(self, after: tuple[float, str] | None, limit: int) -> list[EventRecord]:
        # On the writer's thread: with many events no link names, the search reads them all.
        return await self._on_writer_thread(queries.pending_linked, after, limit)

    async def last_admin_change(self, subject: str) -> float | None:
        return await self._read(queries.last_admin_change, subject)

    async def due(self, now: float, limit: int, skip: tuple[str, ...] = ()) -> list[StoredSubject]:
        return await self._read(queries.due, now, limit, skip)


    async def commit_batch(self, changes: list[Change]) -> set[str]:
        if not changes:
            return set()
        if any(c.expected_version == 0 or c.new_events or c.replayed_events or c.payments for c in changes):
            raise ValueError("commit_batch takes changes of stored subjects with audits only")
        self._file.check()
        # On the loop's connection, like the writes of requests: its page cache holds what they wrote, where
        # the writer's was emptied by each of their commits.
        return await self._write_whole(queries.commit_batch, changes, on_loop=self._commits_on_loop)

    async def doubtful(self, statuses: tuple[str, ...], unconfirmed_before: float, limit: int) -> list[StoredSubject]:
        return await self._on_writer_thread(queries.doubtful, statuses, unconfirmed_before, limit)

    async def cleanup(self, usage_before: int, keys_before: float) -> tuple[int, int]:
        self._file.check()
        return await self._write_whole(queries.cleanup, usage_before, keys_before)

    async def events(self, subject: str, limit: int = 20) -> list[EventRecord]:
        return await self._read(queries.events, subject, limit)

    async def event_log(self, outcome: str | None, type_: str | None, before: tuple[float, str] | None,
                        limit: int) -> list[EventRecord]:
        return await self._read(queries.event_log, outcome, type_, before, limit)

    # --- where each call runs ------------------------------------------------------------------

    async def _read(self, fn, *args):
        """fn(connection, *args) on the loop's thread; a SQLite error is a StoreError."""
        if self._loop_db is None:
            raise StoreError("the store is not open")
        try:
            return await run_on_loop(fn, self._loop_db, *args)
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite: {exc}") from exc

    async def _rows(self, sql: str, params) -> list:
        """The rows of one read on the loop's thread (the personal data's statements are _personal's)."""
        return await self._read(queries.fetch_all, sql, params)

    async def _scan(self, sql: str, params) -> list:
        """The rows of a read that visits every subject, on the writer's thread (_on_writer_thread)."""
        return await self._on_writer_thread(queries.fetch_all, sql, params)

    async def _on_writer_thread(self, fn, *args):
        """fn(connection, *args), a read that visits every subject (no index can answer it), on the writer's
        thread: SQLite lets go of the GIL while it steps, so the loop keeps serving. On the loop, doubtful()
        over a million subscribed subjects held every request until it was done."""
        if not self._open:
            raise StoreError("the store is not open")
        try:
            return await self._writer.run(fn, *args)
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite: {exc}") from exc

    async def _commit_group(self, group: list) -> tuple[list, list]:
        """The group's writes in one transaction (run_group): on the loop's thread, or on the writer's when
        commits fsync. (the writes still wanted, their results): a write whose caller gave up while a lock
        held the group back is dropped."""
        if not self._open:
            raise StoreError("the store is not open")
        self._file.check()
        try:
            if not self._commits_on_loop:
                return group, await self._writer.run(run_group, [w for w, _ in group])
            return await run_on_loop(group_still_wanted, self._loop_db, group)
        except WriteFailed as exc:
            raise StoreError(str(exc)) from exc.__cause__

    async def _write_whole(self, fn, *args, on_loop: bool = False):
        """fn(connection, *args) as one write transaction, run whole in one call on the writer's thread, or
        on_loop on the loop's connection: BEGIN IMMEDIATE, fn, COMMIT; any failure rolls it back whole; a
        SQLite error is a StoreError."""
        if not self._open:
            raise StoreError("the store is not open")
        async with self._write_lock:
            try:
                if on_loop:
                    return await run_on_loop(transaction, self._loop_db, fn, args)
                return await self._writer.run(transaction, fn, args)
            except WriteFailed as exc:
                raise StoreError(str(exc)) from exc.__cause__


