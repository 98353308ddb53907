"""Console sessions in the store (migration 13): every gate process on the store knows every session, so a
console behind a load balancer over several nodes works, and a restart logs nobody out. Rows are keyed by the
SHA-256 of the cookie's session id; the id itself is never stored."""
from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    id_hash: str
    label: str
    admin: bool           # the admin token: may act; the API token: a read-only console
    csrf: str
    opened: float
    expires: float
    token_mac: str = ""   # the MAC of the token that opened it, keyed by the session id (migration 20)


_COLUMNS = "id_hash, label, admin, csrf, opened, expires, token_mac"


def _session(row) -> ConsoleSession:
    return ConsoleSession(row[0], row[1], bool(row[2]), row[3], row[4], row[5], row[6])


class SQLiteConsoleSessions:
    """Mixed into SQLiteStore: uses its _rows (a read on the loop) and _write_whole (a write transaction)."""

    if TYPE_CHECKING:       # SQLiteStore's
        async def _rows(self, sql: str, params) -> list: ...
        async def _write_whole(self, fn: Callable[..., Any], *args: Any, on_loop: bool = False) -> Any: ...

    async def open_console_session(self, session: ConsoleSession, keep: int, replacing: str | None) -> None:
        await self._write_whole(_open, session, keep, replacing)

    async def console_session(self, id_hash: str) -> ConsoleSession | None:
        rows = await self._rows(f"SELECT {_COLUMNS} FROM console_sessions WHERE id_hash = ?", (id_hash,))
        return _session(rows[0]) if rows else None

    async def close_console_session(self, id_hash: str) -> None:
        await self._write_whole(_close, id_hash)


def _open(db: sqlite3.Connection, session: ConsoleSession, keep: int, replacing: str | None) -> None:
    if replacing is not None:
        db.execute("DELETE FROM console_sessions WHERE id_hash = ?", (replacing,))
    db.execute("DELETE FROM console_sessions WHERE expires <= ?", (session.opened,))
    db.execute("DELETE FROM console_sessions WHERE admin = ? AND id_hash NOT IN (SELECT id_hash FROM "
               "console_sessions WHERE admin = ? ORDER BY opened DESC LIMIT ?)",
               (session.admin, session.admin, max(keep - 1, 0)))
    db.execute(f"INSERT INTO console_sessions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
               (session.id_hash, session.label, session.admin, session.csrf, session.opened, session.expires,
                session.token_mac))


def _close(db: sqlite3.Connection, id_hash: str) -> None:
    db.execute("DELETE FROM console_sessions WHERE id_hash = ?", (id_hash,))


class PostgresConsoleSessions:
    """Mixed into PostgresStore: uses its _conn and _tx."""

    if TYPE_CHECKING:       # PostgresStore's
        def _conn(self, timeout: float | None = None) -> contextlib.AbstractAsyncContextManager[Any]: ...
        def _tx(self, timeout: float | None = None) -> contextlib.AbstractAsyncContextManager[Any]: ...

    async def open_console_session(self, session: ConsoleSession, keep: int, replacing: str | None) -> None:
        async with self._tx() as db:
            if replacing is not None:
                await db.execute("DELETE FROM console_sessions WHERE id_hash = $1", replacing)
            await db.execute("DELETE FROM console_sessions WHERE expires <= $1", session.opened)
            await db.execute("DELETE FROM console_sessions WHERE admin = $1 AND id_hash NOT IN (SELECT id_hash FROM "
                             "console_sessions WHERE admin = $1 ORDER BY opened DESC LIMIT $2)",
                             session.admin, max(keep - 1, 0))
            await db.execute(f"INSERT INTO console_sessions ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                             session.id_hash, session.label, session.admin, session.csrf, session.opened,
                             session.expires, session.token_mac)

    async def console_session(self, id_hash: str) -> ConsoleSession | None:
        async with self._conn() as db:
            row = await db.fetchrow(f"SELECT {_COLUMNS} FROM console_sessions WHERE id_hash = $1", id_hash)
        return _session(row) if row else None

    async def close_console_session(self, id_hash: str) -> None:
        async with self._conn() as db:
            await db.execute("DELETE FROM console_sessions WHERE id_hash = $1", id_hash)
