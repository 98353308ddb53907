"""A write whose caller stopped waiting (its task cancelled: a server shutting down, a caller's own timeout) still
lands, shielded; when it does, the subject's cached entry goes, so that checks decide by what the store holds.
Before, the entry was dropped only by the caller after its write returned: a transition, a count or a grant that
landed after its caller left was not seen by checks on SQLite until the entry was read again, which a busy subject
on a file nothing else writes may not be for several TTLs. Real gates on real SQLite files; another connection
holds the file's write lock so that the write is still running when its caller goes."""
from __future__ import annotations

import asyncio
import contextlib
import sqlite3

import pytest

from plangate.server.gate import Gate
from plangate.server.http import api

from .conftest import ROOT
from .store_locks import writes_held

AI = ROOT / "examples" / "ai-api" / "plans.yaml"


async def _left_while_held(database: str, write) -> None:
    """Start the write while another connection holds the file, cancel its caller, then let the write land."""
    async with writes_held(database, "") as paused:
        caller = asyncio.ensure_future(write)
        await paused()                  # the write has reached the store and waits for the lock
        caller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await caller
        assert caller.cancelled()


def _stored(database: str, query: str, *args):
    with contextlib.closing(sqlite3.connect(database)) as db:
        return db.execute(query, args).fetchall()


async def _until(predicate) -> None:
    for _ in range(200):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the write never landed")


@pytest.fixture
async def served(start_gate):
    return await start_gate(PLANGATE_CACHE_TTL="60")     # nothing but an invalidation refreshes an entry here


def _gate(served) -> Gate:
    return served.app[api.GATE]


async def test_a_transition_that_lands_after_its_caller_left_is_what_checks_see(served):
    assert (await served.post("/v1/subjects/u/transition", {"to": "paid", "reason": "test"}))[0] == 200
    assert (await served.check("u"))[1]["status"] == "paid"                   # cached
    await _left_while_held(served.database, _gate(served).admin(
        "u", to="billing_problem", action=None, why="test", actor="admin"))
    await _until(lambda: _stored(served.database, "SELECT status FROM subscriptions WHERE subject = 'u'")
                 == [("billing_problem",)])
    status, body = await served.check("u")
    assert status == 200 and (body["status"], body["limit"]) == ("billing_problem", 5)


async def test_a_count_that_lands_after_its_caller_left_is_what_checks_see(served):
    assert (await served.post("/v1/subjects/u/transition", {"to": "paid", "reason": "test"}))[0] == 200
    assert (await served.consume("u", 1, key="first"))[1]["counted"]
    assert (await served.check("u"))[1]["used"] == 1                          # cached
    await _left_while_held(served.database, _gate(served).count("u", "requests", 5, "second", enforce=True))
    await _until(lambda: _stored(served.database, "SELECT used FROM quota_usage WHERE subject = 'u'") == [(6,)])
    assert (await served.check("u"))[1]["used"] == 6


async def test_a_grant_that_lands_after_its_caller_left_is_what_checks_see(start_gate):
    served = await start_gate(plan=AI, PLANGATE_CACHE_TTL="60")
    past_the_limit = 50_100                                 # the free status's 50,000 tokens, and 100 credits
    assert not (await served.check("u", past_the_limit, meter="tokens"))[1]["allowed"]     # cached, no credits
    await _left_while_held(served.database, _gate(served).grant(
        "u", "tokens", 500, actor="admin", reason="goodwill", key=None, expires_at=None, priority=None))
    await _until(lambda: _stored(served.database, "SELECT amount FROM credit_grants WHERE subject = 'u'") == [(500,)])
    status, body = await served.check("u", past_the_limit, meter="tokens")
    assert status == 200 and (body["allowed"], body["credits"]) == (True, 400)
