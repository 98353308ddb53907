"""The embedded store: one SQLite file in WAL mode.

Writes go one transaction at a time (SQLite has one writer anyway). Reads and the small writes of requests
(counts, webhook events) run on the event loop's own thread, on one connection: each is tens of microseconds
of SQLite's work on cached pages, less than handing it to a thread and back, and a second thread holding the
GIL made every hand-over a contended one (measured: 18 context switches per webhook event, a third of its
CPU). Reads share the connection that writes, whose page cache its own commits keep (another connection's
commit empties it: three reads of a webhook event took 15% longer on a connection of their own); the loop
runs a write transaction whole, so a read never sees one half done. So do the sweep's batches (the gate
keeps them to a few milliseconds each). What may take long runs on aiosqlite's worker threads, beside it
(WAL): migrations, cleanup, checkpoints (they fsync), and every commit when synchronous is FULL (each commit
fsyncs).
"""
from __future__ import annotations

import asyncio
import functools
import sqlite3
import time
from pathlib import Path
from typing import Awaitable

import aiosqlite

from plangate.engine import SubjectState

from ._migrations import migrations, statements
from ._sqlite_credits import SQLiteCredits, _insert_grants
from ._sqlite_plans import SQLitePlans
from ._rows import EVENT_COLUMNS, SUBJECT_COLUMNS, WRITTEN, event_from_row, now_of, subject_from_row, subject_values
from ._sqlite_personal import SQLitePersonalData
from ._base import (AuditEntry, Change, Counted, DuplicateEvent, EventRecord, IdempotencyConflict, Payment, Store,
                    StoreError, StoredSubject, state_from_json, state_json)

BUSY_TIMEOUT_MS = 5000
# The loop's own connections never wait in SQLite (busy_timeout 0): a lock held by another process (another
# gate, `plangate migrate`, a backup) is waited out asleep, the loop serving other requests meanwhile, retried
# after these pauses (seconds) and then every last one, up to BUSY_TIMEOUT_MS in all.
_BUSY_PAUSES = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05)
# SQLite's page cache per connection, in KiB (negative: a size, not a page count). Its default, 2 MiB, holds
# little of a large store: a sweep of 1000 due timers among 1M subjects committed in 64 ms with it, 44 ms
# with 64 MiB (pages of the table and its indexes stay cached between batches).
CACHE_KIB = 65536
# The writer does not checkpoint the WAL inside a commit (SQLite's auto-checkpoint did, ~25 ms in the
# sweep's commit, on whichever request's commit crossed 1000 pages); nor between commits: a checkpoint
# (its fsync) held the writes behind it for 10-25 ms a second (consume's p99 with one connection 12 ms;
# 1 ms without). A connection of the store's own does it, PASSIVE (never waiting for readers or the
# writer), this often, while writes go on. Under writes that never pause it cannot catch up with them, and
# SQLite starts the WAL over only once a checkpoint has: past WAL_RESTART_FRAMES pages (32 MiB of 4 KiB
# pages) the writer checkpoints once between its transactions, as it used to every time (measured: the WAL
# grew 4.6 MB/s under saturating consumes without this, and stays bounded with it).
CHECKPOINT_INTERVAL = 1.0
WAL_RESTART_FRAMES = 8192
WAL_LIMIT_BYTES = 64 << 20      # the WAL file is cut back to this size when SQLite starts it over
_SUBJECT_COLUMNS = SUBJECT_COLUMNS
_EVENT_COLUMNS = EVENT_COLUMNS
_INSERT_SUBJECT = (f"INSERT INTO subscriptions (subject, {', '.join(WRITTEN)}, version, updated_at) "
                   f"VALUES (?, {', '.join('?' for _ in WRITTEN)}, 1, ?)")
# A subject's row is rewritten with only those of its indexed columns whose value changes: SQLite rewrites an
# index entry whenever its column is SET, even to the value it holds. Most webhook events leave the Stripe ids
# and the timer as they are; writing them anyway took 10 updates in a commit from 11 to 36 pages, 15 to 34 us
# an update. The row's current values of those columns are read with the version check.
_INDEXED = ("timer_due", "stripe_customer", "stripe_subscription")
_INDEXED_AT = tuple(WRITTEN.index(c) for c in _INDEXED)
_CURRENT = ("SELECT timer_due, stripe_customer, stripe_subscription FROM subscriptions "
            "WHERE subject = ? AND version = ?")


@functools.lru_cache(maxsize=2 ** len(_INDEXED))
def _update_subject(changed: tuple[bool, ...]) -> tuple[str, tuple[int, ...]]:
    """(the UPDATE of a subject's row, the positions in subject_values() of the values it sets) when the
    indexed columns change as `changed` says."""
    skipped = {c for c, moved in zip(_INDEXED, changed) if not moved}
    positions = tuple(i for i, c in enumerate(WRITTEN) if c not in skipped)
    sets = ", ".join(WRITTEN[i] + " = ?" for i in positions)
    return (f"UPDATE subscriptions SET {sets}, version = version + 1, updated_at = ? WHERE subject = ? AND version = ?",
            positions)


# What commit_batch (timers) writes: the engine's state, in _commit_batch's order of values, then updated_at,
# and the row's key and expected version.
_BATCH_WRITTEN = ("status", "tier", "since", "timer_due", "period_start", "period_end", "plan_version", "paid_through")
_BATCH_UPDATE = (f"UPDATE subscriptions SET {', '.join(c + ' = ?' for c in _BATCH_WRITTEN)}, version = version + 1, "
                 "updated_at = ? WHERE subject = ? AND version = ?")
# Group commit: concurrent writes (counts, webhook events) wait for the writer and then go in one transaction
# (_group: one that raises rolls back alone), answered once that transaction committed. A transaction is
# ~200 us of SQLite's work whatever it holds; in a group a count measured 26 us (of 32), 30 us (of 8). The
# cap bounds how long a group holds the loop: ~5 ms for 32 webhook events.
_GROUP_MAX = 32
# Turns of the event loop a group waits for before it starts, while it is not full. Writes run on the loop, so
# a group began with only the requests of one turn: 4.8 webhook events on average at 32 connections (each
# COMMIT ~170 us); after two turns 9.7, and 1750 -> 2200 events/s. Two turns add tens of microseconds to a
# lone write.
_GATHER_TURNS = 2
# A window's count grows in the database, and only while it stays within the limit (NULL: no limit). Then
# read back: an UPDATE and a SELECT measured 7 us, an upsert with RETURNING 12.5 us (RETURNING alone ~4.6).
_ADD_USAGE = ("UPDATE quota_usage SET used = used + ? WHERE subject = ? AND meter = ? AND window_start = ? "
              "AND (? IS NULL OR used + ? <= ?)")
_USED = "SELECT used FROM quota_usage WHERE subject = ? AND meter = ? AND window_start = ?"
# Events waiting for their subject, by customer or subscription: a search in each partial index (the second
# leaves out what the first found). `customer = ? OR subscription = ?` scanned every pending event instead,
# reading each one's row (1000 pending: 158 us, this 5-7 us), and every linking event asks.
_PENDING = (f"SELECT {EVENT_COLUMNS} FROM subscription_events WHERE outcome = 'pending' AND stripe_customer = ?1 "
            f"UNION ALL SELECT {EVENT_COLUMNS} FROM subscription_events WHERE outcome = 'pending' AND "
            "stripe_subscription = ?2 AND (stripe_customer = ?1) IS NOT 1")
# Events waiting for a charge or payment intent (a dispute), that neither of the above found.
_PENDING_PAYMENT = (f"SELECT {EVENT_COLUMNS} FROM subscription_events WHERE outcome = 'pending' AND stripe_payment = ? "
                    "AND (stripe_customer = ?) IS NOT 1 AND (stripe_subscription = ?) IS NOT 1")
_LINKED = "SELECT subject FROM stripe_links WHERE stripe_id = ?"
_LINK = "INSERT OR IGNORE INTO stripe_links (stripe_id, subject) VALUES (?, ?)"
_INSERT_TRANSITION = ("INSERT INTO transitions (subject, from_status, to_status, trigger, cause_id, reason, actor, at, "
                      "plan_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")


def sqlite_path(database: str) -> str:
    """The file of a PLANGATE_DATABASE value: a path, or sqlite:///path."""
    return database.removeprefix("sqlite:///").removeprefix("sqlite://")


class SQLiteStore(SQLiteCredits, SQLitePersonalData, SQLitePlans, Store):
    def __init__(self, database: str, synchronous: str = "NORMAL", checkpoint_interval: float = CHECKPOINT_INTERVAL):
        self.path = sqlite_path(database)
        self.synchronous = synchronous
        self.checkpoint_interval = checkpoint_interval
        self._checkpointing: asyncio.Task | None = None
        self._checkpointer: aiosqlite.Connection | None = None
        self._writer: aiosqlite.Connection | None = None       # on its worker thread: long writes
        self._loop_db: sqlite3.Connection | None = None         # on the loop's thread: reads, small writes
        # Every commit fsyncs under FULL: those stay off the loop, on the writer's thread.
        self._commits_on_loop = synchronous.upper() != "FULL"
        self._write_lock = asyncio.Lock()
        self._writes: list[tuple[tuple, asyncio.Future]] = []     # (fn, args) waiting for the next group
        self._committing: asyncio.Task | None = None               # the task that commits the groups

    # --- life cycle ----------------------------------------------------------------------------

    async def open(self) -> None:
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._writer = await self._connect()
            await self._writer.execute_fetchall("PRAGMA wal_autocheckpoint = 0")
            self._loop_db = self._connect_on_loop()
            self._loop_db.execute("PRAGMA wal_autocheckpoint = 0")
            self._checkpointer = await self._connect()
        except (sqlite3.Error, OSError) as exc:
            await self.close()
            raise StoreError(f"cannot open SQLite database {self.path}: {exc}") from exc
        self._checkpointing = asyncio.create_task(self._checkpoint_now_and_then())

    async def _checkpoint_now_and_then(self) -> None:
        """PRAGMA wal_checkpoint(PASSIVE) every checkpoint_interval on the checkpointer's connection (it copies
        what it can without waiting for readers or the writer), and on the writer, between its transactions,
        when the WAL has grown past WAL_RESTART_FRAMES. A failed checkpoint is retried next time."""
        while True:
            await asyncio.sleep(self.checkpoint_interval)
            if self._checkpointer is None:
                return
            try:
                # (busy, frames in the WAL, frames copied), fetched to the end: a pragma's row left unread
                # keeps a statement open.
                (_, frames, _), = await self._checkpointer.execute_fetchall("PRAGMA wal_checkpoint(PASSIVE)")
                if frames > WAL_RESTART_FRAMES:
                    async with self._write_lock:
                        if self._writer is not None:
                            await self._writer.execute_fetchall("PRAGMA wal_checkpoint(PASSIVE)")
            except (sqlite3.Error, ValueError):
                pass

    def _pragmas(self, busy_timeout_ms: int) -> tuple[str, ...]:
        # secure_delete: the space a rewritten or deleted row leaves is zeroed, so that a reduced payload or an
        # erased subject does not live on in free space (_sqlite_personal).
        return ("journal_mode = WAL", f"busy_timeout = {busy_timeout_ms}", "foreign_keys = ON", "secure_delete = ON",
                f"synchronous = {self.synchronous}", f"cache_size = -{CACHE_KIB}",
                f"journal_size_limit = {WAL_LIMIT_BYTES}")

    async def _connect(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        for pragma in self._pragmas(BUSY_TIMEOUT_MS):
            await conn.execute(f"PRAGMA {pragma}")
        return conn

    def _connect_on_loop(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None)
        for pragma in self._pragmas(0):
            conn.execute(f"PRAGMA {pragma}").fetchall()
        return conn

    async def close(self) -> None:
        if self._checkpointing is not None:
            self._checkpointing.cancel()
            await asyncio.wait([self._checkpointing])
            self._checkpointing = None
        if self._committing is not None:    # writes already queued are committed (or fail) first
            await asyncio.wait([self._committing])
        for conn in (self._writer, self._loop_db, self._checkpointer):
            if conn is not None:
                try:
                    closed = conn.close()
                    if closed is not None:     # aiosqlite's close is a coroutine, sqlite3's is not
                        await closed
                except (sqlite3.Error, ValueError):
                    pass
        self._writer = self._loop_db = self._checkpointer = None

    async def migrate(self) -> tuple[int, int]:
        return await self._write_whole(_migrate)

    async def ping(self) -> None:
        await self._rows("SELECT 1 FROM subscriptions LIMIT 1", ())

    # --- reads ---------------------------------------------------------------------------------

    async def load(self, subject: str) -> StoredSubject | None:
        return await self._read(_load, subject)

    async def used(self, subject: str, windows: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        if not windows:
            return {}
        where = " OR ".join("(meter = ? AND window_start = ?)" for _ in windows)
        params = [subject] + [v for pair in windows for v in pair]
        rows = await self._rows(f"SELECT meter, window_start, used FROM quota_usage WHERE subject = ? AND ({where})",
                                params)
        found = {(meter, start): used for meter, start, used in rows}
        return {w: found.get(w, 0) for w in windows}

    async def transitions(self, subject: str, limit: int = 20) -> list[AuditEntry]:
        rows = await self._rows(
            "SELECT subject, from_status, to_status, trigger, reason, at, plan_version, cause_id, actor "
            "FROM transitions WHERE subject = ? ORDER BY id DESC LIMIT ?", (subject, limit))
        return [AuditEntry(*row) for row in rows]

    # --- writes --------------------------------------------------------------------------------

    # The writes of requests return their group's future itself, awaitable as the coroutine of an async def
    # is: the gate shields every write, and shielding a coroutine wraps it in a task first (~8 us a request).

    def count(self, current: StoredSubject, meter: str, window_start: int, amount: int,
              limit: int | None, key: str | None, now: float) -> Awaitable[Counted]:
        return self._grouped(_count, current, meter, window_start, amount, limit, key, now)

    def commit(self, change: Change) -> Awaitable[bool]:
        return self._grouped(_commit, change)

    def record_event(self, event: EventRecord, payments: tuple[Payment, ...] = ()) -> Awaitable[bool]:
        return self._grouped(_record_event, event, payments)

    def _grouped(self, fn, *args) -> asyncio.Future:
        """fn(connection, *args) as a write of its own, committed with the writes that queued meanwhile (group
        commit, _commit_groups): one transaction for the writes of every request that arrived meanwhile."""
        done = asyncio.get_running_loop().create_future()
        if self._writer is None:
            done.set_exception(StoreError("the store is not open"))
            return done
        self._writes.append(((fn, args), done))
        if self._committing is None:
            self._committing = asyncio.create_task(self._commit_groups())
        return done

    async def _commit_groups(self) -> None:
        """Commits the queued writes, a group at a time, until none is left: one transaction a group, where a
        write that fails rolls back only itself (_group). A write's future
        is resolved only after its group's COMMIT (or with its error): nothing is acknowledged before it is
        durable as the store's synchronous setting makes commits. A write whose caller gave up before its
        group started (or while a lock held it back) is not run."""
        try:
            while self._writes:
                for _ in range(_GATHER_TURNS):       # let the requests already read queue their writes too
                    if len(self._writes) >= _GROUP_MAX:
                        break
                    await asyncio.sleep(0)
                async with self._write_lock:
                    group = [(write, f) for write, f in self._writes[:_GROUP_MAX] if not f.done()]
                    del self._writes[:_GROUP_MAX]
                    if not group:
                        continue
                    try:
                        group, results = await self._commit_group(group)
                    except Exception as exc:
                        for _, f in group:
                            if not f.done():
                                f.set_exception(exc)
                        continue
                    except BaseException:       # this task cancelled: its group's callers learn nothing more
                        for _, f in group:
                            f.cancel()
                        raise
                    for (_, f), (ok, value) in zip(group, results):
                        if not f.done():
                            f.set_result(value) if ok else f.set_exception(value)
        finally:
            self._committing = None
            for _, f in self._writes:   # only if this task itself was cancelled
                f.cancel()
            self._writes.clear()

    # --- what the webhook and the jobs look up ----------------------------------------------------

    async def event_seen(self, event_id: str) -> bool:
        return await self._read(_event_seen, event_id)

    async def find_subject(self, customer: str | None, subscription: str | None,
                           payments: tuple[str, ...] = ()) -> str | None:
        return await self._read(_find_subject, customer, subscription, payments)

    async def lookup(self, event_id: str, subject: str | None, customer: str | None,
                     subscription: str | None, payments: tuple[str, ...] = ()
                     ) -> tuple[bool, str | None, StoredSubject | None]:
        return await self._read(_lookup, event_id, subject, customer, subscription, payments)

    async def history(self, subject: str, since: float) -> list[EventRecord]:
        rows = await self._rows(
            f"SELECT {_EVENT_COLUMNS} FROM subscription_events WHERE subject = ? AND created >= ? "
            "AND outcome != 'pending' ORDER BY created, event_id", (subject, since))
        return [event_from_row(r) for r in rows]

    async def pending(self, customer: str | None, subscription: str | None,
                      payments: tuple[str, ...] = ()) -> list[EventRecord]:
        return [event_from_row(r) for r in await self._read(_pending, customer, subscription, payments)]

    async def last_admin_change(self, subject: str) -> float | None:
        rows = await self._rows("SELECT MAX(at) FROM transitions WHERE subject = ? AND trigger LIKE 'admin:%'",
                                (subject,))
        return rows[0][0]

    async def due(self, now: float, limit: int, skip: tuple[str, ...] = ()) -> list[StoredSubject]:
        skipped = f" AND subject NOT IN ({', '.join('?' for _ in skip)})" if skip else ""
        rows = await self._rows(f"SELECT {_SUBJECT_COLUMNS} FROM subscriptions WHERE timer_due <= ?{skipped} "
                                "ORDER BY timer_due LIMIT ?", (now, *skip, limit))
        return [subject_from_row(r) for r in rows]

    async def commit_batch(self, changes: list[Change]) -> set[str]:
        if not changes:
            return set()
        if any(c.expected_version == 0 or c.new_events or c.replayed_events or c.payments for c in changes):
            raise ValueError("commit_batch takes changes of stored subjects with audits only")
        # On the loop's connection, like the writes of requests: its page cache holds what they wrote, where
        # the writer's was emptied by each of their commits (a batch of 1000: 21-29 ms there, 16-19 ms here).
        return await self._write_whole(_commit_batch, changes, on_loop=self._commits_on_loop)

    async def doubtful(self, statuses: tuple[str, ...], unconfirmed_before: float, limit: int) -> list[StoredSubject]:
        marks = ", ".join("?" for _ in statuses) or "NULL"
        rows = await self._scan(
            f"SELECT {_SUBJECT_COLUMNS} FROM subscriptions WHERE stripe_subscription IS NOT NULL AND "
            f"(status IN ({marks}) OR COALESCE(confirmed_at, 0) < ?) ORDER BY COALESCE(confirmed_at, 0) LIMIT ?",
            (*statuses, unconfirmed_before, limit))
        return [subject_from_row(r) for r in rows]

    async def cleanup(self, usage_before: int, keys_before: float) -> tuple[int, int]:
        return await self._write_whole(_cleanup, usage_before, keys_before)

    async def events(self, subject: str, limit: int = 20) -> list[EventRecord]:
        rows = await self._rows(f"SELECT {_EVENT_COLUMNS} FROM subscription_events WHERE subject = ? "
                                "ORDER BY created DESC, event_id DESC LIMIT ?", (subject, limit))
        return [event_from_row(r) for r in rows]

    async def _read(self, fn, *args):
        """fn(connection, *args) on the loop's thread; a SQLite error is a StoreError."""
        if self._loop_db is None:
            raise StoreError("the store is not open")
        try:
            return await _on_loop(fn, self._loop_db, *args)
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite: {exc}") from exc

    async def _rows(self, sql: str, params) -> list:
        return await self._read(_fetch_all, sql, params)

    async def _scan(self, sql: str, params) -> list:
        """A read that visits every subject (no index can answer it) on the writer's thread: SQLite lets go of
        the GIL while it steps, so the loop keeps serving. On the loop, doubtful() over a million subscribed
        subjects held every request for about 150 ms (on the thread: the loop paused 3.5 ms at most)."""
        if self._writer is None:
            raise StoreError("the store is not open")
        try:
            return await self._writer._execute(_fetch_all, self._writer._conn, sql, params)
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite: {exc}") from exc

    async def _commit_group(self, group: list) -> tuple[list, list]:
        """The group's writes in one transaction (_group): on the loop's thread, or on the writer's when
        commits fsync. (the writes still wanted, their results): a write whose caller gave up while a lock
        held the group back is dropped."""
        if self._writer is None:
            raise StoreError("the store is not open")
        try:
            if not self._commits_on_loop:
                return group, await self._writer._execute(_group, self._writer._conn, [w for w, _ in group])
            return await _on_loop(_group_still_wanted, self._loop_db, group)
        except _WriteFailed as exc:
            raise StoreError(str(exc)) from exc.__cause__

    # --- plumbing ------------------------------------------------------------------------------

    async def _write_whole(self, fn, *args, on_loop: bool = False):
        """fn(connection, *args) as one write transaction, run whole in one call on the writer's thread
        (aiosqlite's worker, which owns the connection), or on_loop on the loop's connection: BEGIN IMMEDIATE,
        fn, COMMIT; any failure rolls it back whole; a SQLite error is a StoreError. aiosqlite has no public
        call for this: `_execute` is its own hand-over to the worker (the store tests fail loudly if a new
        aiosqlite drops it)."""
        if self._writer is None:
            raise StoreError("the store is not open")
        async with self._write_lock:
            writer = self._writer
            try:
                if on_loop:
                    return await _on_loop(_transaction, self._loop_db, fn, args)
                return await writer._execute(_transaction, writer._conn, fn, args)
            except _WriteFailed as exc:
                raise StoreError(str(exc)) from exc.__cause__


class _WriteFailed(Exception):
    """A SQLite error inside _transaction, with the message the StoreError gets."""


def _busy(exc: BaseException | None) -> bool:
    """SQLITE_BUSY (or one of its extended codes): another connection holds a lock this one must wait for."""
    return isinstance(exc, sqlite3.OperationalError) and \
        (getattr(exc, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_BUSY


async def _on_loop(fn, *args):
    """fn(*args) on the loop's thread, retried while SQLite answers BUSY (as busy_timeout would, but asleep:
    the loop serves other requests meanwhile), up to BUSY_TIMEOUT_MS; then the BUSY error stands. A write
    that got BUSY was rolled back whole by _transaction: retrying it is safe."""
    waited, pauses = 0.0, iter(_BUSY_PAUSES)
    while True:
        try:
            return fn(*args)
        except (sqlite3.OperationalError, _WriteFailed) as exc:
            cause = exc.__cause__ if isinstance(exc, _WriteFailed) else exc
            if not _busy(cause) or waited >= BUSY_TIMEOUT_MS / 1000:
                raise
        pause = next(pauses, _BUSY_PAUSES[-1])
        await asyncio.sleep(pause)
        waited += pause


def _fetch_all(db: sqlite3.Connection, sql: str, params) -> list:
    return db.execute(sql, params).fetchall()


def _transaction(db: sqlite3.Connection, fn, args):
    try:
        db.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        raise _WriteFailed(f"SQLite: cannot start a write: {exc}") from exc
    try:
        result = fn(db, *args)
    except sqlite3.Error as exc:
        _rollback(db)
        raise _WriteFailed(f"SQLite: {exc}") from exc
    except BaseException:
        _rollback(db)
        raise
    try:
        db.execute("COMMIT")
    except sqlite3.Error as exc:
        _rollback(db)
        raise _WriteFailed(f"SQLite: commit failed: {exc}") from exc
    return result


def _rollback(db: sqlite3.Connection) -> None:
    try:
        db.execute("ROLLBACK")
    except sqlite3.Error:
        pass


def _migrate(db: sqlite3.Connection) -> tuple[int, int]:
    """SQLiteStore.migrate's transaction: the migrations past PRAGMA user_version; (version before, after)."""
    before = version = db.execute("PRAGMA user_version").fetchone()[0]
    for number, _, sql in migrations("sqlite"):
        if number > version:
            for statement in statements(sql):
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {number}")
            version = number
    return before, version


def _cleanup(db: sqlite3.Connection, usage_before: int, keys_before: float) -> tuple[int, int]:
    usage = db.execute("DELETE FROM quota_usage WHERE window_start > 0 AND window_start < ?", (usage_before,))
    keys = db.execute("DELETE FROM usage_keys WHERE created_at < ?", (keys_before,))
    return usage.rowcount, keys.rowcount


def _load(db: sqlite3.Connection, subject: str) -> StoredSubject | None:
    row = db.execute(f"SELECT {_SUBJECT_COLUMNS} FROM subscriptions WHERE subject = ?", (subject,)).fetchone()
    return subject_from_row(row) if row else None


def _event_seen(db: sqlite3.Connection, event_id: str) -> bool:
    return db.execute("SELECT 1 FROM subscription_events WHERE event_id = ?", (event_id,)).fetchone() is not None


def _find_subject(db: sqlite3.Connection, customer: str | None, subscription: str | None,
                  payments: tuple[str, ...] = ()) -> str | None:
    row = _find_row(db, "subject", customer, subscription, payments)
    return row[0] if row else None


def _find_row(db: sqlite3.Connection, columns: str, customer: str | None, subscription: str | None,
              payments: tuple[str, ...] = ()):
    """`columns` of the subject linked to the subscription (its row's, else any it had), else to the customer,
    else to a charge or payment intent of its events; None if none is."""
    for column, value in (("stripe_subscription", subscription), ("stripe_customer", customer)):
        if value:
            row = db.execute(f"SELECT {columns} FROM subscriptions WHERE {column} = ? LIMIT 1", (value,)).fetchone()
            if row:
                return row
        if column == "stripe_subscription" and value:     # another subscription the subject holds or held
            row = _linked_row(db, columns, value)
            if row:
                return row
    for value in payments:
        row = _linked_row(db, columns, value)
        if row:
            return row
    return None


def _linked_row(db: sqlite3.Connection, columns: str, stripe_id: str):
    linked = db.execute(_LINKED, (stripe_id,)).fetchone()
    if linked is None:
        return None
    return db.execute(f"SELECT {columns} FROM subscriptions WHERE subject = ?", (linked[0],)).fetchone()


def _pending(db: sqlite3.Connection, customer: str | None, subscription: str | None,
             payments: tuple[str, ...] = ()) -> list:
    """SQLiteStore.pending's rows, in created order."""
    rows = db.execute(_PENDING, (customer, subscription)).fetchall()
    for payment in payments:
        rows += db.execute(_PENDING_PAYMENT, (payment, customer, subscription)).fetchall()
    if payments:
        rows = list({row[0]: row for row in rows}.values())      # a charge and its payment intent: one row
    return rows if len(rows) < 2 else sorted(rows, key=lambda row: (row[2], row[0]))     # (created, event_id)


def _lookup(db: sqlite3.Connection, event_id: str, subject: str | None, customer: str | None,
            subscription: str | None, payments: tuple[str, ...] = ()
            ) -> tuple[bool, str | None, StoredSubject | None]:
    """SQLiteStore.lookup's reads."""
    if _event_seen(db, event_id):
        return True, None, None
    if subject is None:     # found by a Stripe id: its row read at once
        row = _find_row(db, _SUBJECT_COLUMNS, customer, subscription, payments)
        return False, (row[0] if row else None), (subject_from_row(row) if row else None)
    return False, subject, _load(db, subject)


def _count(db: sqlite3.Connection, current: StoredSubject, meter: str, window_start: int, amount: int,
           limit: int | None, key: str | None, now: float) -> Counted:
    """SQLiteStore.count's transaction."""
    subject = current.state.subject
    if key is not None:
        seen = db.execute("SELECT subject, meter, amount, used_after FROM usage_keys WHERE key = ?", (key,)).fetchone()
        if seen:
            if tuple(seen[:3]) != (subject, meter, amount):
                raise IdempotencyConflict(
                    f"idempotency key {key!r} was first used for subject {seen[0]!r}, meter {seen[1]!r}, "
                    f"amount {seen[2]}; use a new key for different work")
            return Counted(True, seen[3], duplicate=True)
    # Is the stored version still the one the caller decided on? A subject not stored yet (version 0) is
    # stored now, in its initial state.
    row = db.execute("SELECT version FROM subscriptions WHERE subject = ?", (subject,)).fetchone()
    if current.version == 0 and row is None:
        db.execute(_INSERT_SUBJECT, _subject_params(current, now))
    elif row is None or row[0] != current.version:
        return Counted(False, 0, conflict=True)
    window = (subject, meter, window_start)
    if db.execute(_ADD_USAGE, (amount, *window, limit, amount, limit)).rowcount:
        used = db.execute(_USED, window).fetchone()[0]
    else:       # the window has no row yet, or the amount would take it past the limit
        found = db.execute(_USED, window).fetchone()
        if found is not None or (limit is not None and amount > limit):
            return Counted(False, found[0] if found else 0)
        db.execute("INSERT INTO quota_usage (subject, meter, window_start, used) VALUES (?, ?, ?, ?)",
                   (*window, amount))
        used = amount
    if key is not None:
        db.execute("INSERT INTO usage_keys (key, subject, meter, amount, window_start, used_after, created_at) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?)", (key, subject, meter, amount, window_start, used, now))
    return Counted(True, used)


def _group_still_wanted(db: sqlite3.Connection, group: list[tuple]) -> tuple[list, list]:
    """_group over the writes of `group` ((write, future) each) whose caller still waits: (those, results)."""
    group = [(write, f) for write, f in group if not f.done()]
    return group, _group(db, [write for write, _ in group])


def _group(db: sqlite3.Connection, group: list[tuple]) -> list[tuple[bool, object]]:
    """A group of writes ((fn, args) each) in one transaction, where a write that raises rolls back alone and
    gets its error, the others go on. (True, result) or (False, exception) per write, once COMMIT succeeded;
    _WriteFailed for all if the transaction cannot begin or commit, or SQLite rolled the whole transaction
    back (disk full, I/O error). Writes seldom raise (a duplicate event, a reused idempotency key): the group
    runs first without a SAVEPOINT per write (two statements a write, ~3-5 us); if one raises, the whole
    transaction is rolled back and the group runs again, each write in a SAVEPOINT. A write depends only on
    what the database holds, so running it again gives what it gave."""
    if len(group) > 1:
        try:
            return _transaction(db, _all_or_none, (group,))
        except _OneRaised:
            pass
    return _transaction(db, _in_savepoints, (group,))


class _OneRaised(Exception):
    """A write of a group run without savepoints raised: the group runs again with them."""


def _all_or_none(db: sqlite3.Connection, group: list[tuple]) -> list[tuple[bool, object]]:
    try:
        return [(True, fn(db, *args)) for fn, args in group]
    except Exception as exc:
        raise _OneRaised() from exc


def _in_savepoints(db: sqlite3.Connection, group: list[tuple]) -> list[tuple[bool, object]]:
    results: list[tuple[bool, object]] = []
    for fn, args in group:
        db.execute("SAVEPOINT write")
        try:
            results.append((True, fn(db, *args)))
        except Exception as exc:
            db.execute("ROLLBACK TO write")
            if isinstance(exc, sqlite3.Error):
                error = StoreError(f"SQLite: {exc}")
                error.__cause__ = exc
                exc = error
            results.append((False, exc))
        db.execute("RELEASE write")
        if not db.in_transaction:
            raise sqlite3.OperationalError("the transaction was rolled back")
    return results


def _commit(db: sqlite3.Connection, change: Change) -> bool:
    """SQLiteStore.commit's transaction."""
    new = change.subject
    s = new.state
    if change.expected_version == 0:
        if db.execute("SELECT 1 FROM subscriptions WHERE subject = ?", (s.subject,)).fetchone():
            return False
        db.execute(_INSERT_SUBJECT, _subject_params(new, now_of(change)))
    else:
        current = db.execute(_CURRENT, (s.subject, change.expected_version)).fetchone()
        if current is None:
            return False
        values = subject_values(new)
        sql, positions = _update_subject(tuple(values[i] != was for i, was in zip(_INDEXED_AT, current)))
        db.execute(sql, (*[values[i] for i in positions], now_of(change), s.subject, change.expected_version))
    if change.audits:
        db.executemany(_INSERT_TRANSITION, [_transition_values(a) for a in change.audits])
    for event in change.new_events:
        if not _insert_event(db, event):
            raise DuplicateEvent(event.id)
    for event in change.replayed_events:
        db.execute("UPDATE subscription_events SET subject = ?, outcome = ?, reason = ?, state_before = ? "
                   "WHERE event_id = ?",
                   (event.subject, event.outcome, event.reason, state_json(event.state_before), event.id))
    _upsert_payments(db, change.payments)
    if change.links:
        db.executemany(_LINK, [(stripe_id, s.subject) for stripe_id in change.links])
    if change.grants:
        _insert_grants(db, s.subject, change.grants, "stripe")
    return True


def _record_event(db: sqlite3.Connection, event: EventRecord, payments: tuple[Payment, ...]) -> bool:
    """SQLiteStore.record_event's transaction."""
    if not _insert_event(db, event):
        return False
    _upsert_payments(db, payments)
    return True


def _insert_event(db: sqlite3.Connection, e: EventRecord) -> bool:
    cursor = db.execute(
        f"INSERT INTO subscription_events ({_EVENT_COLUMNS}, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (event_id) DO NOTHING",
        (e.id, e.type, e.created, e.payload, e.outcome, e.reason, e.subject, e.stripe_customer,
         e.stripe_subscription, state_json(e.state_before), e.stripe_payment, time.time()))
    return cursor.rowcount == 1


def _upsert_payments(db: sqlite3.Connection, payments) -> None:
    for p in payments:
        db.execute(
            "INSERT INTO payments (invoice_id, subject, stripe_customer, stripe_subscription, status, amount, "
            "currency, event_id, created, updated_created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (invoice_id) DO UPDATE SET status = excluded.status, amount = excluded.amount, "
            "subject = COALESCE(excluded.subject, payments.subject), event_id = excluded.event_id, "
            "updated_created = excluded.updated_created WHERE excluded.updated_created >= payments.updated_created",
            (p.invoice_id, p.subject, p.stripe_customer, p.stripe_subscription, p.status, p.amount, p.currency,
             p.event_id, p.created, p.created))


def _commit_batch(db: sqlite3.Connection, changes: list[Change]) -> set[str]:
    """SQLiteStore.commit_batch's transaction. A batch writes the subjects' state
    (_BATCH_WRITTEN) and audit rows only: their Stripe ids, watermark, confirmation and fold state stay as
    stored (the version check makes the stored row the one each change was made from), which spares the
    indexes on the Stripe ids a rewrite of every row. An UPDATE a subject, whose row count says whether its
    version held: 1000 of them took 27-31 ms with their audit rows, one UPDATE ... FROM (VALUES ...) RETURNING
    a 500 (SQLite materializes the values and the joined rows first) 37-44 ms."""
    execute = db.execute
    done: set[str] = set()
    for c in changes:
        st = c.subject.state
        if execute(_BATCH_UPDATE, (st.status, st.tier, st.since, st.timer_due, st.period_start, st.period_end,
                                   st.plan_version, st.paid_through, st.since, st.subject,
                                   c.expected_version)).rowcount == 1:
            done.add(st.subject)
    db.executemany(_INSERT_TRANSITION, [_transition_values(a) for c in changes if c.subject.state.subject in done
                                        for a in c.audits])
    return done


def _transition_values(a: AuditEntry) -> tuple:
    return (a.subject, a.from_status, a.to_status, a.trigger, a.cause_id, a.reason, a.actor, a.at, a.plan_version)


def _subject_params(new: StoredSubject, now: float) -> tuple:
    return (new.state.subject, *subject_values(new), now)



