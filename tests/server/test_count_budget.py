"""A consume whose store call outlasts the time budget is answered as it went: the fail mode only when the count
was withdrawn before it reached the database, its real outcome when it had (on each store, and on SQLite with
commits on the loop and on the writer's thread). Before, the fail mode answered "not counted" of counts the
store went on to make: work denied and billed."""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sqlite3

import asyncpg
import pytest

from plangate.server.http.api import GATE

from .conftest import ROOT

BURST = 120


@pytest.fixture(params=["sqlite, commits on the loop", "sqlite, commits on the writer's thread", "postgresql"])
def store(request, tmp_path) -> tuple[str, str]:
    """(the database, PLANGATE_SQLITE_SYNCHRONOUS): FULL commits on the SQLite writer's thread."""
    if request.param == "postgresql":
        return request.getfixturevalue("pg_dsn"), "NORMAL"
    return str(tmp_path / "budget.sqlite3"), "FULL" if "thread" in request.param else "NORMAL"


@contextlib.asynccontextmanager
async def writes_held(database: str, tables: str = "quota_usage"):
    """Another process's write lock on the store (on PostgreSQL, on `tables`) while the block runs (reads go
    on)."""
    if database.startswith("postgresql"):
        other = await asyncpg.connect(database)
        tx = other.transaction()
        await tx.start()
        await other.execute(f"LOCK TABLE {tables} IN EXCLUSIVE MODE")
        try:
            yield
        finally:
            await tx.rollback()
            await other.close()
    else:
        other = sqlite3.connect(database, isolation_level=None, timeout=5)
        other.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            other.execute("ROLLBACK")
            other.close()


async def test_no_answer_says_not_counted_of_a_count_the_store_made(start_gate, store):
    database, synchronous = store
    gate = await start_gate(database=database, PLANGATE_SQLITE_SYNCHRONOUS=synchronous)
    core = gate.app[GATE]
    status, _ = await gate.post("/v1/subjects/u/transition", {"to": "paid", "reason": "budget test"})
    assert status == 200
    assert (await gate.consume("u", 1, key="first"))[1]["counted"]      # the subject is stored

    # Counts sent while another writer holds the store, on a budget they outlast: those still queued when it
    # runs out are withdrawn (the fail mode answers); those already with the database are awaited until the
    # lock goes. Then counts sent on a budget they keep.
    patient = core.config
    core.config = dataclasses.replace(patient, store_timeout=0.05)
    async with writes_held(database):
        # In groups 10 ms apart: on PostgreSQL the first batches are sent (and wait for the lock), the
        # later ones queue behind them (three at most in flight).
        held = []
        for first in range(0, BURST // 2, 5):
            held.append(asyncio.gather(*(gate.consume("u", 1, key=f"k{i}") for i in range(first, first + 5))))
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
    answers = [answer for group in held for answer in await group]
    core.config = dataclasses.replace(patient, store_timeout=5.0)
    answers += await asyncio.gather(*(gate.consume("u", 1, key=f"k{i}") for i in range(BURST // 2, BURST)))
    core.config = patient

    assert all(status == 200 for status, _ in answers)
    assert "fail_open" in {body["reason"] for _, body in answers[:BURST // 2]}      # some were withdrawn
    assert {body["reason"] for _, body in answers} <= {"ok", "fail_open"}
    assert all(body["counted"] for _, body in answers[BURST // 2:])
    counted = {f"k{i}" for i, (_, body) in enumerate(answers) if body["counted"]}
    assert all(body["allowed"] for _, body in answers)
    # What the store holds is what the answers said: the usage, and each key (a repeat of a counted key is a
    # duplicate, of one the answer said it did not count is counted now).
    _, view = await gate.get("/v1/subjects/u")
    assert [row["used"] for row in view["usage"] if row["meter"] == "requests"] == [1 + len(counted)]
    for i in range(BURST):
        status, again = await gate.consume("u", 1, key=f"k{i}")
        assert status == 200 and again["duplicate"] == (f"k{i}" in counted), (i, again)


async def test_first_counts_waiting_for_a_connection_are_withdrawn_not_awaited(start_gate, pg_dsn):
    """On PostgreSQL a subject's first count is a transaction of its own (a task, not a batch): while it waits
    for one of the pool's two connections it is withdrawn at the budget, as a queued count is; once it has one,
    it is awaited."""
    gate = await start_gate(database=pg_dsn, PLANGATE_PG_POOL_MAX="2")
    core = gate.app[GATE]
    for i in range(BURST // 2):       # read (not stored yet) and cached: the burst's time goes to counting
        assert (await gate.check(f"new{i}"))[0] == 200
    patient = core.config
    core.config = dataclasses.replace(patient, store_timeout=0.001)
    answers = await asyncio.gather(*(gate.consume(f"new{i}", 1, key=f"n{i}") for i in range(BURST // 2)))
    core.config = patient

    assert all(status == 200 for status, _ in answers)
    reasons = {body["reason"] for _, body in answers}
    assert "ok" in reasons and reasons - {"ok"} in ({"fail_open"}, {"fail_closed"}), reasons
    for i, (_, body) in enumerate(answers):
        _, view = await gate.get(f"/v1/subjects/new{i}")
        assert [row["used"] for row in view["usage"] if row["meter"] == "requests"] == [int(body["counted"])]
        status, again = await gate.consume(f"new{i}", 1, key=f"n{i}")
        assert status == 200 and again["duplicate"] == body["counted"], (i, body, again)


async def test_an_admins_write_that_outlasts_the_budget_is_answered_as_it_went(start_gate, store):
    """A transition and a credit grant sent while another writer holds the store, on a budget they outlast: each
    is answered as it went, 503 'nothing changed' only when nothing was written, else the change, and checks
    decide by what the store holds. Before, both answered 503 and were committed once the lock went: the cached
    subject was decided by its old status, and a grant retried (no key) was granted twice."""
    database, synchronous = store
    gate = await start_gate(plan=ROOT / "examples" / "ai-api" / "plans.yaml", database=database, PLANGATE_SQLITE_SYNCHRONOUS=synchronous)
    core = gate.app[GATE]
    assert (await gate.post("/v1/subjects/bob/transition", {"to": "subscribed", "reason": "budget test"}))[0] == 200
    assert (await gate.check("bob", meter="tokens"))[1]["allowed"]                  # cached

    patient = core.config
    core.config = dataclasses.replace(patient, store_timeout=0.05)
    async with writes_held(database, "subscriptions, credit_grants"):
        moved = asyncio.ensure_future(gate.post("/v1/subjects/bob/transition", {"to": "lapsed", "reason": "t"}))
        granted = asyncio.ensure_future(gate.post("/v1/subjects/alice/credits",
                                                  {"meter": "tokens", "amount": 100, "reason": "goodwill"}))
        await asyncio.sleep(0.3)
    (moved_status, _), (granted_status, _) = await moved, await granted
    core.config = patient

    assert {moved_status, granted_status} <= {200, 503}
    await asyncio.sleep(1.0)    # a write still running after its answer (the bug) has landed by now
    _, bob = await gate.get("/v1/subjects/bob")
    assert bob["status"] == ("lapsed" if moved_status == 200 else "subscribed")
    assert (await gate.check("bob", meter="tokens"))[1]["status"] == bob["status"]
    _, alice = await gate.get("/v1/subjects/alice")
    assert [len(m["grants"]) for m in alice["credits"]] == [int(granted_status == 200)]
