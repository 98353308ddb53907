"""What a store holds, as raw as a person reading it could get at: a SQLite database's files (the WAL and its index
included) byte by byte, a PostgreSQL database's every table as text; and the gate's JSON log lines."""
from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import asyncpg
import pytest

from plangate.server.logs import LOGGER_NAME, configure

from . import stripe_events as se


async def store_text(database: str) -> str:
    """Everything the store holds, as one text (SQLite: its files' bytes, undecodable bytes dropped)."""
    if database.startswith("postgresql://"):
        conn = await asyncpg.connect(database)
        try:
            tables = [r[0] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
            rows = [f"{t}: {r[0]}" for t in tables for r in await conn.fetch(f'SELECT t::text FROM "{t}" t')]
        finally:
            await conn.close()
        return "\n".join(rows)
    files = [Path(database + suffix) for suffix in ("", "-wal", "-shm", "-journal")]
    return "".join(f.read_bytes().decode("utf-8", "ignore") for f in files if f.exists())


async def rows(database: str, sql: str, *args) -> list[tuple]:
    """A query on either store (written with ?)."""
    if database.startswith("postgresql://"):
        parts = sql.split("?")
        sql = parts[0] + "".join(f"${i}{p}" for i, p in enumerate(parts[1:], 1))
        conn = await asyncpg.connect(database)
        try:
            return [tuple(r) for r in await conn.fetch(sql, *args)]
        finally:
            await conn.close()
    import sqlite3
    with sqlite3.connect(database) as db:
        return db.execute(sql, args).fetchall()


def found(text: str, needles: list[str]) -> list[str]:
    return [n for n in needles if n in text]


async def deliver(gate, evt: dict) -> tuple[int, dict | str]:
    body = se.encode(evt)
    async with gate.session.post(gate.url + "/webhook/stripe", data=body,
                                 headers={"Stripe-Signature": se.sign(body)}) as r:
        text = await r.text()
        assert r.status == 200, text
        return r.status, json.loads(text)


@pytest.fixture
def json_logs():
    """The gate's log as it writes it (JSON lines, at DEBUG), for the test's length; the logger as it was after."""
    logger = logging.getLogger(LOGGER_NAME)
    saved = (list(logger.handlers), logger.level, logger.propagate)
    stream = io.StringIO()
    configure("DEBUG", stream)

    def lines() -> list[str]:
        return stream.getvalue().splitlines()

    yield lines
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]
