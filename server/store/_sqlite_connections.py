"""The SQLite store's connections: their settings, the loop's calls that wait out another process's lock
asleep, the connections that live on a thread of their own, and the checkpoints that copy the WAL back
into the database file."""
from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from ._base import StoreError
from ._sqlite_transactions import WriteFailed

BUSY_TIMEOUT_MS = 5000
# The loop's own connections never wait in SQLite (busy_timeout 0): a lock held by another process (another
# gate, `plangate migrate`, a backup) is waited out asleep, the loop serving other requests meanwhile, retried
# after these pauses (seconds) and then every last one, up to BUSY_TIMEOUT_MS in all.
_BUSY_PAUSES = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05)
# SQLite's page cache per connection, in KiB (negative: a size, not a page count). Its default, 2 MiB, holds
# little of a large store: with 64 MiB, a sweep's batches among a million subjects find the pages of the
# table and its indexes still cached from the batch before.
CACHE_KIB = 65536
# The writer does not checkpoint the WAL inside a commit (SQLite's auto-checkpoint did, in whichever
# request's commit crossed 1000 pages); nor between commits: a checkpoint (its fsync) held the writes behind
# it, which set consume's p99. A connection of the store's own does it, PASSIVE (never waiting for readers
# or the writer), this often, while writes go on. Under writes that never pause it cannot catch up with
# them, and SQLite starts the WAL over only once a checkpoint has: past WAL_RESTART_FRAMES pages (32 MiB of
# 4 KiB pages) the writer checkpoints once between its transactions, so that the WAL stays bounded under
# saturating writes too.
CHECKPOINT_INTERVAL = 1.0
WAL_RESTART_FRAMES = 8192
WAL_LIMIT_BYTES = 64 << 20      # the WAL file is cut back to this size when SQLite starts it over


def sqlite_path(database: str) -> str:
    """The file of a PLANGATE_DATABASE value: a path, or sqlite:///path."""
    return database.removeprefix("sqlite:///").removeprefix("sqlite://")


def _pragmas(synchronous: str, busy_timeout_ms: int) -> tuple[str, ...]:
    # secure_delete: the space a rewritten or deleted row leaves is zeroed, so that a reduced payload or an
    # erased subject does not live on in free space (_sqlite_personal).
    return ("journal_mode = WAL", f"busy_timeout = {busy_timeout_ms}", "foreign_keys = ON", "secure_delete = ON",
            f"synchronous = {synchronous}", f"cache_size = -{CACHE_KIB}",
            f"journal_size_limit = {WAL_LIMIT_BYTES}")


class ThreadConnection:
    """A sqlite3 connection that lives on a thread of its own, which waits in SQLite for another process's
    lock: `run(fn, *args)` hands fn(connection, *args) to that thread whole, so a transaction of any number
    of statements is one hand-over and back. Calls run in the order they were made.

    The hand-over is the standard library's thread, queue and loop.call_soon_threadsafe, as aiosqlite does
    it inside; aiosqlite's public API hands over one statement at a time (a transaction of a consume would
    be eight hand-overs, each costing more than this one), and asyncio's run_in_executor costs several times
    as much per hand-over (bench/README.md, "The SQLite writer's thread")."""

    def __init__(self, name: str):
        self.name = name
        self._calls: queue.SimpleQueue | None = None

    async def open(self, path: str, synchronous: str) -> None:
        """Starts the thread, which connects; a failure to connect is raised here."""
        self._calls = queue.SimpleQueue()
        threading.Thread(target=_serve, args=(self._calls, path, synchronous), name=f"plangate-sqlite-{self.name}",
                         daemon=True).start()     # daemon: a store left open never holds up the interpreter's exit
        try:
            await self.run(_nothing)
        except BaseException:
            self._stop()
            raise

    def run(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future:
        """fn(connection, *args) on the connection's thread, its result (or exception) in the future; StoreError
        when the connection is closed."""
        done = asyncio.get_running_loop().create_future()
        if self._calls is None:
            done.set_exception(StoreError(f"the store is not open (its {self.name} connection is closed)"))
        else:
            self._calls.put((done, fn, args))
        return done

    async def fetch_all(self, sql: str, params: tuple = ()) -> list:
        """Every row of one statement (a pragma's row left unread would keep a statement open)."""
        return await self.run(_fetch_all, sql, params)

    async def close(self) -> None:
        """Closes the connection once the calls already made have run; the thread ends."""
        if self._calls is not None:
            closing = self.run(_close)
            self._stop()
            await closing

    def _stop(self) -> None:
        if self._calls is not None:
            self._calls.put(None)
            self._calls = None


def _serve(calls: queue.SimpleQueue, path: str, synchronous: str) -> None:
    """The connection's thread: connects, then runs the calls handed over until told to stop (None)."""
    conn: sqlite3.Connection | None = None
    failed: BaseException | None = None
    try:
        conn = _connect_on_thread(path, synchronous)
    except BaseException as exc:      # every call learns it, the first being open()'s
        failed = exc
    while (call := calls.get()) is not None:
        done, fn, args = call
        try:
            if conn is None:
                raise failed or sqlite3.ProgrammingError("no connection")
            outcome = (True, fn(conn, *args))
        except BaseException as exc:
            outcome = (False, exc)
        try:
            done.get_loop().call_soon_threadsafe(_settle, done, outcome)
        except RuntimeError:        # the loop is closed: nobody waits any more
            pass


def _settle(done: asyncio.Future, outcome: tuple[bool, Any]) -> None:
    if not done.done():     # its caller may have given up (cancelled)
        ok, value = outcome
        done.set_result(value) if ok else done.set_exception(value)


def _nothing(conn: sqlite3.Connection) -> None:
    """A call that only proves the thread is connected."""


def _close(conn: sqlite3.Connection) -> None:
    conn.close()


def _connect_on_thread(path: str, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    for pragma in _pragmas(synchronous, BUSY_TIMEOUT_MS):
        conn.execute(f"PRAGMA {pragma}").fetchall()
    return conn


def _fetch_all(db: sqlite3.Connection, sql: str, params: tuple) -> list:
    return db.execute(sql, params).fetchall()


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
        self.connection = ThreadConnection("checkpointer")
        self._task: asyncio.Task | None = None

    async def open(self, path: str, synchronous: str) -> None:
        await self.connection.open(path, synchronous)
        self._task = asyncio.create_task(self._now_and_then())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])
            self._task = None
        try:
            await self.connection.close()
        except sqlite3.Error:
            pass

    async def _now_and_then(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                # (busy, frames in the WAL, frames copied)
                (_, frames, _), = await self.connection.fetch_all("PRAGMA wal_checkpoint(PASSIVE)")
                if frames > WAL_RESTART_FRAMES:
                    await self._on_writer()
            except (sqlite3.Error, StoreError):
                pass
