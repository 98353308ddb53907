"""A consume whose store call outlasts the time budget is answered as it went: the fail mode only when the count
was withdrawn before it reached the database, its real outcome when it had (on each store, and on SQLite with
commits on the loop and on the writer's thread). Before, the fail mode answered "not counted" of counts the
store went on to make: work denied and billed."""
from __future__ import annotations

import asyncio
import dataclasses

import pytest

from plangate.server.http.api import GATE

BURST = 120


@pytest.fixture(params=["sqlite, commits on the loop", "sqlite, commits on the writer's thread", "postgresql"])
def store(request, tmp_path) -> tuple[str, str]:
    """(the database, PLANGATE_SQLITE_SYNCHRONOUS): FULL commits on the SQLite writer's thread."""
    if request.param == "postgresql":
        return request.getfixturevalue("pg_dsn"), "NORMAL"
    return str(tmp_path / "budget.sqlite3"), "FULL" if "thread" in request.param else "NORMAL"


async def test_no_answer_says_not_counted_of_a_count_the_store_made(start_gate, store):
    database, synchronous = store
    gate = await start_gate(database=database, PLANGATE_SQLITE_SYNCHRONOUS=synchronous)
    core = gate.app[GATE]
    status, _ = await gate.post("/v1/subjects/u/transition", {"to": "paid", "reason": "budget test"})
    assert status == 200
    assert (await gate.consume("u", 1, key="first"))[1]["counted"]      # the subject is stored

    patient = core.config
    core.config = dataclasses.replace(patient, store_timeout=0.001)     # a budget most counts outlast
    answers = await asyncio.gather(*(gate.consume("u", 1, key=f"k{i}") for i in range(BURST)))
    core.config = patient

    assert all(status == 200 for status, _ in answers)
    reasons = {body["reason"] for _, body in answers}
    assert reasons == {"ok", "fail_open"}, reasons      # some counts were withdrawn, some made
    counted = {f"k{i}" for i, (_, body) in enumerate(answers) if body["counted"]}
    assert all(body["allowed"] for _, body in answers)
    # What the store holds is what the answers said: the usage, and each key (a repeat of a counted key is a
    # duplicate, of one the answer said it did not count is counted now).
    _, view = await gate.get("/v1/subjects/u")
    assert [row["used"] for row in view["usage"] if row["meter"] == "requests"] == [1 + len(counted)]
    for i in range(BURST):
        status, again = await gate.consume("u", 1, key=f"k{i}")
        assert status == 200 and again["duplicate"] == (f"k{i}" in counted), (i, again)


async def test_first_counts_waiting_for_a_connection_are_withdrawn_not_awaited(start_gate, store):
    """A subject's first count is a transaction of its own (on PostgreSQL a task, not a batch): while it waits
    for a connection it is withdrawn at the budget, as a queued count is; once it has one, it is awaited."""
    database, synchronous = store
    gate = await start_gate(database=database, PLANGATE_SQLITE_SYNCHRONOUS=synchronous, PLANGATE_PG_POOL_MAX="2")
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
