"""Interleavings made with the database's own locks: another connection holds them while the gate's writers
queue behind it, so a test can let one writer read, hold it before its write, and send the next."""
from __future__ import annotations

import asyncio
import contextlib
import sqlite3

import asyncpg


@contextlib.asynccontextmanager
async def writes_held(store_url: str, lock: str, *args):
    """Writes wait, in the order they come, while this is open; it gives `queued(n=1)`, which returns once n
    writers wait. SQLite: the file's write lock (`lock` unused), and writers cannot be seen waiting: a pause long
    enough for a request's reads. PostgreSQL: `lock` (a statement, with `args`) taken in a transaction, its waiters
    seen in pg_stat_activity."""
    if store_url.startswith("postgresql://"):
        conn, watcher = await asyncpg.connect(store_url), await asyncpg.connect(store_url)

        async def queued(n: int = 1) -> None:
            for _ in range(500):
                if await watcher.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                          "AND wait_event_type = 'Lock'") >= n:
                    return
                await asyncio.sleep(0.01)
            raise AssertionError(f"{n} writers never queued")
        try:
            async with conn.transaction():
                await conn.execute(lock, *args)
                yield queued
        finally:
            await conn.close()
            await watcher.close()
        return

    async def paused(n: int = 1) -> None:
        await asyncio.sleep(0.5)
    holder = sqlite3.connect(store_url, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        yield paused
        holder.execute("ROLLBACK")
    finally:
        holder.close()
