"""The SQLite store's transactions: one write whole, or a group of concurrent writes committed together.

Group commit: concurrent writes (counts, webhook events) wait for the writer and then go in one transaction,
where a write that raises rolls back alone; each is answered once that transaction committed.
"""
from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

from ._base import StoreError

# A transaction costs SQLite about as much whatever it holds, so a write in a group costs a fraction of a
# write alone. The cap bounds how long a group holds the loop (a few milliseconds for webhook events).
GROUP_MAX = 32
# Turns of the event loop a group waits for before it starts, while it is not full. Writes run on the loop, so
# a group began with only the requests of one turn; after two turns it holds about twice as many, each COMMIT
# shared by more writes. Two turns add tens of microseconds to a lone write.
GATHER_TURNS = 2

Write = tuple[Callable[..., Any], tuple]                      # fn(connection, *args), args
Queued = tuple[Write, "asyncio.Future[Any]"]                  # a write and the future its caller awaits
Results = list[tuple[bool, Any]]                              # (True, result) or (False, exception) per write


class WriteFailed(Exception):
    """A SQLite error inside transaction(), with the message the StoreError gets."""


def transaction(db: sqlite3.Connection, fn: Callable[..., Any], args: tuple) -> Any:
    """fn(db, *args) between BEGIN IMMEDIATE and COMMIT; any failure rolls it back whole (WriteFailed for a
    SQLite error, anything else as raised)."""
    try:
        db.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        raise WriteFailed(f"SQLite: cannot start a write: {exc}") from exc
    try:
        result = fn(db, *args)
    except sqlite3.Error as exc:
        _rollback(db)
        raise WriteFailed(f"SQLite: {exc}") from exc
    except BaseException:
        _rollback(db)
        raise
    try:
        db.execute("COMMIT")
    except sqlite3.Error as exc:
        _rollback(db)
        raise WriteFailed(f"SQLite: commit failed: {exc}") from exc
    return result


def _rollback(db: sqlite3.Connection) -> None:
    try:
        db.execute("ROLLBACK")
    except sqlite3.Error:
        pass


def group_still_wanted(db: sqlite3.Connection, group: list[Queued]) -> tuple[list[Queued], Results]:
    """run_group over the writes of `group` whose caller still waits: (those, results)."""
    group = [(write, f) for write, f in group if not f.done()]
    return group, run_group(db, [write for write, _ in group])


def run_group(db: sqlite3.Connection, group: list[Write]) -> Results:
    """A group of writes in one transaction, where a write that raises rolls back alone and gets its error, the
    others go on. (True, result) or (False, exception) per write, once COMMIT succeeded; WriteFailed for all if
    the transaction cannot begin or commit, or SQLite rolled the whole transaction back (disk full, I/O
    error). Writes seldom raise (a duplicate event, a reused idempotency key): the group runs first without a
    SAVEPOINT per write (two statements a write); if one raises, the whole transaction is rolled back
    and the group runs again, each write in a SAVEPOINT. A write depends only on what the database holds, so
    running it again gives what it gave."""
    if len(group) > 1:
        try:
            return transaction(db, _all_or_none, (group,))
        except _OneRaised:
            pass
    return transaction(db, _in_savepoints, (group,))


class _OneRaised(Exception):
    """A write of a group run without savepoints raised: the group runs again with them."""


class Undone(Exception):
    """Raised by a write that writes nothing after all (a refused spend): what it wrote so far is rolled back, and
    `result` is its answer."""

    def __init__(self, result: Any):
        super().__init__("undone")
        self.result = result


def _all_or_none(db: sqlite3.Connection, group: list[Write]) -> Results:
    try:
        return [(True, fn(db, *args)) for fn, args in group]
    except Exception as exc:
        raise _OneRaised() from exc


def _in_savepoints(db: sqlite3.Connection, group: list[Write]) -> Results:
    results: Results = []
    for fn, args in group:
        db.execute("SAVEPOINT write")
        try:
            results.append((True, fn(db, *args)))
        except Undone as undone:
            db.execute("ROLLBACK TO write")
            results.append((True, undone.result))
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


class GroupCommit:
    """Writes queued by concurrent callers, committed a group at a time by one task, under the store's write
    lock. `commit_group(group)` runs a group's transaction wherever the store runs it and returns (the writes
    still wanted, their results)."""

    def __init__(self, commit_group: Callable[[list[Queued]], Awaitable[tuple[list[Queued], Results]]],
                 write_lock: asyncio.Lock):
        self._commit_group = commit_group
        self._write_lock = write_lock
        self._writes: list[Queued] = []
        self._committing: asyncio.Task | None = None      # the task that commits the groups
        self.open = False       # the store's: a write added while it is not fails at once

    def add(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future:
        """fn(connection, *args) as a write of its own, committed with the writes that queue meanwhile.
        The future itself is returned, awaitable as the coroutine of an async def is: the gate shields every
        write, and shielding a coroutine wraps it in a task first, a task a request."""
        done = asyncio.get_running_loop().create_future()
        if not self.open:
            done.set_exception(StoreError("the store is not open"))
            return done
        self._writes.append(((fn, args), done))
        if self._committing is None:
            self._committing = asyncio.create_task(self._commit_groups())
        return done

    def queued(self, future: asyncio.Future) -> bool:
        """Is the write of this future waiting for a group (none has taken it yet)?"""
        return any(f is future for _, f in self._writes)

    @property
    def waiting(self) -> int:
        """Writes queued for a group that has not started."""
        return len(self._writes)

    async def drain(self) -> None:
        """Wait until the writes already queued are committed (or failed)."""
        if self._committing is not None:
            await asyncio.wait([self._committing])

    async def _commit_groups(self) -> None:
        """Commits the queued writes, a group at a time, until none is left. A write's future is resolved only
        after its group's COMMIT (or with its error): nothing is acknowledged before it is durable as the
        store's synchronous setting makes commits. A write whose caller gave up before its group started (or
        while a lock held it back) is not run."""
        try:
            while self._writes:
                for _ in range(GATHER_TURNS):       # let the requests already read queue their writes too
                    if len(self._writes) >= GROUP_MAX:
                        break
                    await asyncio.sleep(0)
                async with self._write_lock:
                    group = [(write, f) for write, f in self._writes[:GROUP_MAX] if not f.done()]
                    del self._writes[:GROUP_MAX]
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
