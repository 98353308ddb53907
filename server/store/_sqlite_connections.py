"""The SQLite store's connections: their settings, the loop's calls that wait out another process's lock
asleep, and the checkpoints that copy the WAL back into the database file."""
from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

import aiosqlite

from ._sqlite_transactions import WriteFailed

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


def sqlite_path(database: str) -> str:
    """The file of a PLANGATE_DATABASE value: a path, or sqlite:///path."""
    return database.removeprefix("sqlite:///").removeprefix("sqlite://")


def _pragmas(synchronous: str, busy_timeout_ms: int) -> tuple[str, ...]:
    return ("journal_mode = WAL", f"busy_timeout = {busy_timeout_ms}", "foreign_keys = ON",
            f"synchronous = {synchronous}", f"cache_size = -{CACHE_KIB}",
            f"journal_size_limit = {WAL_LIMIT_BYTES}")


async def connect(path: str, synchronous: str) -> aiosqlite.Connection:
    """A connection on a worker thread of its own, which waits in SQLite for another process's lock."""
    conn = await aiosqlite.connect(path, isolation_level=None)
    for pragma in _pragmas(synchronous, BUSY_TIMEOUT_MS):
        await conn.execute(f"PRAGMA {pragma}")
    return conn


def connect_on_loop(path: str, synchronous: str) -> sqlite3.Connection:
    """A connection for the loop's thread: it never waits inside SQLite (run_on_loop waits, asleep)."""
    conn = sqlite3.connect(path, isolation_level=None)
    for pragma in _pragmas(synchronous, 0):
        conn.execute(f"PRAGMA {pragma}").fetchall()
    return conn


def _busy(exc: BaseException | None) -> bool:
    """SQLITE_BUSY (or one of its extended codes): another connection holds a lock this one must wait for."""
    return isinstance(exc, sqlite3.OperationalError) and \
        (getattr(exc, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_BUSY


async def run_on_loop(fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args) on the loop's thread, retried while SQLite answers BUSY (as busy_timeout would, but asleep:
    the loop serves other requests meanwhile), up to BUSY_TIMEOUT_MS; then the BUSY error stands. A write
    that got BUSY was rolled back whole by its transaction: retrying it is safe."""
    waited, pauses = 0.0, iter(_BUSY_PAUSES)
    while True:
        try:
            return fn(*args)
        except (sqlite3.OperationalError, WriteFailed) as exc:
            cause = exc.__cause__ if isinstance(exc, WriteFailed) else exc
            if not _busy(cause) or waited >= BUSY_TIMEOUT_MS / 1000:
                raise
        pause = next(pauses, _BUSY_PAUSES[-1])
        await asyncio.sleep(pause)
        waited += pause


class Checkpointer:
    """PRAGMA wal_checkpoint(PASSIVE) every `interval` seconds on a connection of its own (it copies what it
    can without waiting for readers or the writer), and `on_writer()` (a checkpoint between the writer's
    transactions) when the WAL has grown past WAL_RESTART_FRAMES. A failed checkpoint is retried next time."""

    def __init__(self, interval: float, on_writer: Callable[[], Awaitable[None]]):
        self.interval = interval
        self._on_writer = on_writer
        self.connection: aiosqlite.Connection | None = None
        self._task: asyncio.Task | None = None

    async def open(self, path: str, synchronous: str) -> None:
        self.connection = await connect(path, synchronous)
        self._task = asyncio.create_task(self._now_and_then())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])
            self._task = None
        if self.connection is not None:
            try:
                await self.connection.close()
            except (sqlite3.Error, ValueError):
                pass
            self.connection = None

    async def _now_and_then(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if self.connection is None:
                return
            try:
                # (busy, frames in the WAL, frames copied), fetched to the end: a pragma's row left unread
                # keeps a statement open.
                (_, frames, _), = await self.connection.execute_fetchall("PRAGMA wal_checkpoint(PASSIVE)")
                if frames > WAL_RESTART_FRAMES:
                    await self._on_writer()
            except (sqlite3.Error, ValueError):
                pass
