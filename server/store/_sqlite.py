"""The embedded store: one SQLite file in WAL mode, through aiosqlite.

Writes go through one connection, one transaction at a time (SQLite has one writer anyway);
reads use a second connection, which WAL lets run beside the writer.
"""
from __future__ import annotations

import asyncio
import sqlite3
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path

import aiosqlite

from engine import SubjectState

from ._base import AuditEntry, Counted, IdempotencyConflict, Store, StoreError, StoredSubject

BUSY_TIMEOUT_MS = 5000
_SUBJECT_COLUMNS = ("subject, status, tier, since, timer_due, period_start, period_end, plan_version, "
                    "stripe_customer, stripe_subscription, version")


def sqlite_path(database: str) -> str:
    """The file of a PLANGATE_DATABASE value: a path, or sqlite:///path."""
    return database.removeprefix("sqlite:///").removeprefix("sqlite://")


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, SQL) of every migration, in order."""
    folder = resources.files("server.store") / "migrations" / "sqlite"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


class SQLiteStore(Store):
    def __init__(self, database: str, synchronous: str = "NORMAL"):
        self.path = sqlite_path(database)
        self.synchronous = synchronous
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()

    # --- life cycle ----------------------------------------------------------------------------

    async def open(self) -> None:
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._writer = await self._connect()
            self._reader = await self._connect()
        except (sqlite3.Error, OSError) as exc:
            await self.close()
            raise StoreError(f"cannot open SQLite database {self.path}: {exc}") from exc

    async def _connect(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        for pragma in ("journal_mode = WAL", f"busy_timeout = {BUSY_TIMEOUT_MS}", "foreign_keys = ON",
                       f"synchronous = {self.synchronous}"):
            await conn.execute(f"PRAGMA {pragma}")
        return conn

    async def close(self) -> None:
        for conn in (self._writer, self._reader):
            if conn is not None:
                try:
                    await conn.close()
                except (sqlite3.Error, ValueError):
                    pass
        self._writer = self._reader = None

    async def migrate(self) -> tuple[int, int]:
        async with self._transaction() as db:
            before = (await (await db.execute("PRAGMA user_version")).fetchone())[0]
            version = before
            for number, _, sql in migrations():
                if number <= version:
                    continue
                for statement in _statements(sql):
                    await db.execute(statement)
                await db.execute(f"PRAGMA user_version = {number}")
                version = number
        return before, version

    async def ping(self) -> None:
        async with self._reading() as db:
            await db.execute("SELECT 1 FROM subscriptions LIMIT 1")

    # --- reads ---------------------------------------------------------------------------------

    async def load(self, subject: str) -> StoredSubject | None:
        async with self._reading() as db:
            cursor = await db.execute(f"SELECT {_SUBJECT_COLUMNS} FROM subscriptions WHERE subject = ?", (subject,))
            row = await cursor.fetchone()
        return _subject(row) if row else None

    async def used(self, subject: str, windows: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        if not windows:
            return {}
        where = " OR ".join("(meter = ? AND window_start = ?)" for _ in windows)
        params = [subject] + [v for pair in windows for v in pair]
        async with self._reading() as db:
            cursor = await db.execute(
                f"SELECT meter, window_start, used FROM quota_usage WHERE subject = ? AND ({where})", params)
            rows = await cursor.fetchall()
        found = {(meter, start): used for meter, start, used in rows}
        return {w: found.get(w, 0) for w in windows}

    async def transitions(self, subject: str, limit: int = 20) -> list[AuditEntry]:
        async with self._reading() as db:
            cursor = await db.execute(
                "SELECT subject, from_status, to_status, trigger, reason, at, plan_version, cause_id, actor "
                "FROM transitions WHERE subject = ? ORDER BY id DESC LIMIT ?", (subject, limit))
            rows = await cursor.fetchall()
        return [AuditEntry(*row) for row in rows]

    # --- writes --------------------------------------------------------------------------------

    async def count(self, current: StoredSubject, meter: str, window_start: int, amount: int,
                    limit: int | None, key: str | None, now: float) -> Counted:
        subject = current.state.subject
        async with self._transaction() as db:
            if key is not None:
                cursor = await db.execute(
                    "SELECT subject, meter, amount, used_after FROM usage_keys WHERE key = ?", (key,))
                seen = await cursor.fetchone()
                if seen:
                    if tuple(seen[:3]) != (subject, meter, amount):
                        raise IdempotencyConflict(
                            f"idempotency key {key!r} was first used for subject {seen[0]!r}, meter {seen[1]!r}, "
                            f"amount {seen[2]}; use a new key for different work")
                    return Counted(True, seen[3], duplicate=True)
            if not await self._is_current(db, current, now):
                return Counted(False, 0, conflict=True)
            await db.execute(
                "INSERT INTO quota_usage (subject, meter, window_start, used) VALUES (?, ?, ?, 0) "
                "ON CONFLICT DO NOTHING", (subject, meter, window_start))
            cursor = await db.execute(
                "UPDATE quota_usage SET used = used + ? WHERE subject = ? AND meter = ? AND window_start = ? "
                "AND (? IS NULL OR used + ? <= ?) RETURNING used",
                (amount, subject, meter, window_start, limit, amount, limit))
            row = await cursor.fetchone()
            if row is None:
                cursor = await db.execute(
                    "SELECT used FROM quota_usage WHERE subject = ? AND meter = ? AND window_start = ?",
                    (subject, meter, window_start))
                return Counted(False, (await cursor.fetchone())[0])
            if key is not None:
                await db.execute(
                    "INSERT INTO usage_keys (key, subject, meter, amount, window_start, used_after, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)", (key, subject, meter, amount, window_start, row[0], now))
            return Counted(True, row[0])

    async def _is_current(self, db: aiosqlite.Connection, current: StoredSubject, now: float) -> bool:
        """Inside a write: is the stored version still the one the caller decided on? A subject not
        stored yet (version 0) is stored now, in its initial state."""
        cursor = await db.execute("SELECT version FROM subscriptions WHERE subject = ?", (current.state.subject,))
        row = await cursor.fetchone()
        if current.version == 0 and row is None:
            await self._insert(db, current, now)
            return True
        return row is not None and row[0] == current.version

    async def save(self, new: StoredSubject, expected_version: int, audit: AuditEntry | None) -> bool:
        s = new.state
        async with self._transaction() as db:
            if expected_version == 0:
                cursor = await db.execute("SELECT 1 FROM subscriptions WHERE subject = ?", (s.subject,))
                if await cursor.fetchone():
                    return False
                await self._insert(db, new, audit.at if audit else s.since)
            else:
                cursor = await db.execute(
                    "UPDATE subscriptions SET status = ?, tier = ?, since = ?, timer_due = ?, period_start = ?, "
                    "period_end = ?, plan_version = ?, stripe_customer = ?, stripe_subscription = ?, "
                    "version = version + 1, updated_at = ? WHERE subject = ? AND version = ?",
                    (s.status, s.tier, s.since, s.timer_due, s.period_start, s.period_end, s.plan_version,
                     new.stripe_customer, new.stripe_subscription, audit.at if audit else s.since,
                     s.subject, expected_version))
                if cursor.rowcount != 1:
                    return False
            if audit is not None:
                await db.execute(
                    "INSERT INTO transitions (subject, from_status, to_status, trigger, cause_id, reason, actor, at, "
                    "plan_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (audit.subject, audit.from_status, audit.to_status, audit.trigger, audit.cause_id,
                     audit.reason, audit.actor, audit.at, audit.plan_version))
        return True

    async def _insert(self, db: aiosqlite.Connection, new: StoredSubject, now: float) -> None:
        s = new.state
        await db.execute(
            f"INSERT INTO subscriptions ({_SUBJECT_COLUMNS}, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?)",
            (s.subject, s.status, s.tier, s.since, s.timer_due, s.period_start, s.period_end, s.plan_version,
             new.stripe_customer, new.stripe_subscription, now))

    # --- plumbing ------------------------------------------------------------------------------

    @asynccontextmanager
    async def _transaction(self):
        """One write transaction on the writer connection; any failure rolls it back whole."""
        if self._writer is None:
            raise StoreError("the store is not open")
        async with self._write_lock:
            db = self._writer
            try:
                await db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite: cannot start a write: {exc}") from exc
            try:
                yield db
            except sqlite3.Error as exc:
                await _rollback(db)
                raise StoreError(f"SQLite: {exc}") from exc
            except BaseException:
                await _rollback(db)
                raise
            try:
                await db.execute("COMMIT")
            except sqlite3.Error as exc:
                await _rollback(db)
                raise StoreError(f"SQLite: commit failed: {exc}") from exc

    @asynccontextmanager
    async def _reading(self):
        if self._reader is None:
            raise StoreError("the store is not open")
        try:
            yield self._reader
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite: {exc}") from exc


async def _rollback(db: aiosqlite.Connection) -> None:
    try:
        await db.execute("ROLLBACK")
    except sqlite3.Error:
        pass


def _statements(sql: str) -> list[str]:
    """Split a migration file into statements (no semicolons inside statements in our files)."""
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    return [part.strip() for part in "\n".join(lines).split(";") if part.strip()]


def _subject(row) -> StoredSubject:
    state = SubjectState(subject=row[0], status=row[1], tier=row[2], since=row[3], timer_due=row[4],
                         period_start=row[5], period_end=row[6], plan_version=row[7])
    return StoredSubject(state, row[10], row[8], row[9])
