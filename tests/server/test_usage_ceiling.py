"""A window's usage never goes past its ceiling (2**62, the most a scaled limit says), through a running gate on
both stores: the count that would take it past is refused with 422 `usage_ceiling` and writes nothing (not the
usage, not its idempotency key, not an overage report), and the subject keeps working. Before, enough large
counts in one window (/v1/usage, or consumes of an unlimited or unbounded-overage quota, up to PLANGATE_MAX_AMOUNT
each) took the usage past 2**63 - 1: SQLite turned it into a float, and PostgreSQL's bigint overflowed, every later
count of the subject then answering 503 (the store's error taken for the store being down).

The usage is put near the ceiling by a plain SQL write in the test's own store, not by 9,225 requests."""
from __future__ import annotations

import sqlite3
import time

import asyncpg
import pytest

from plangate.client import GateClient, GateRequestError
from plangate.engine import SubjectState
from plangate.server.store import StoredSubject, open_store

from . import stripe_events as se
from .conftest import TOKEN
from .stripe_meters import KEY
from .test_entitlements import AI, QUIET, deliver, subscription
from .test_overage_reports import fake  # noqa: F401

CEILING = 2**62
MAX_AMOUNT = 10**15
# No cache: every request reads the usage the test wrote into the store.
BIG = {"PLANGATE_MAX_AMOUNT": str(MAX_AMOUNT), "PLANGATE_CACHE_TTL": "0"}


@pytest.fixture
def database(each_database) -> str:
    return each_database


async def sql(database: str, query: str, *args):
    """Rows of one statement on the gate's own store (SQLite's ? or PostgreSQL's $n placeholders)."""
    if database.startswith("postgresql://"):
        conn = await asyncpg.connect(database)
        try:
            return [tuple(r) for r in await conn.fetch(query.replace("?", "${}").format(*range(1, len(args) + 1)),
                                                       *args)]
        finally:
            await conn.close()
    with sqlite3.connect(database) as db:
        return db.execute(query, args).fetchall()


async def set_used(database: str, subject: str, meter: str, used: int) -> None:
    await sql(database, "UPDATE quota_usage SET used = ? WHERE subject = ? AND meter = ?", used, subject, meter)


async def stored(database: str, subject: str, meter: str) -> tuple[list, list, int]:
    """(the window's usage, the subject's idempotency keys, its overage reports) as the store holds them."""
    used = await sql(database, "SELECT used FROM quota_usage WHERE subject = ? AND meter = ?", subject, meter)
    keys = await sql(database, "SELECT key FROM usage_keys WHERE subject = ? ORDER BY key", subject)
    reports = await sql(database, "SELECT count(*) FROM overage_reports WHERE subject = ?", subject)
    return [r[0] for r in used], [r[0] for r in keys], reports[0][0]


async def count(gate, path: str, subject: str, amount: int, key: str, meter: str = "requests"):
    return await gate.post(path, {"subject": subject, "meter": meter, "amount": amount, "idempotency_key": key})


def refused(status: int, body) -> None:
    assert status == 422, body
    assert body["error"] == "usage_ceiling", body
    assert "nothing was counted" in body["message"] and str(CEILING) in body["message"], body


class TestCounts:
    """/v1/usage on the shipped plan: counted whatever the limit says (Store.count with no limit)."""

    async def test_usage_up_to_the_ceiling_counts_and_past_it_is_refused_writing_nothing(self, start_gate,
                                                                                          database):
        gate = await start_gate(database=database, **BIG)
        assert (await count(gate, "/v1/usage", "u1", 1, "first"))[0] == 200
        await set_used(database, "u1", "requests", CEILING - 10)
        status, body = await count(gate, "/v1/usage", "u1", 10, "to-the-ceiling")
        assert (status, body["counted"], body["used"]) == (200, True, CEILING), body
        refused(*await count(gate, "/v1/usage", "u1", 1, "past"))
        refused(*await count(gate, "/v1/usage", "u1", MAX_AMOUNT, "far-past"))
        assert await stored(database, "u1", "requests") == ([CEILING], ["first", "to-the-ceiling"], 0)
        # A repeat of a counted key still answers as the first time; the refused key was never kept (no 409).
        status, body = await count(gate, "/v1/usage", "u1", 10, "to-the-ceiling")
        assert (status, body["duplicate"], body["used"]) == (200, True, CEILING), body
        refused(*await count(gate, "/v1/usage", "u1", 2, "past"))
        # The subject keeps working: a check and its view answer, with whole numbers.
        status, body = await gate.check("u1")
        assert (status, body["used"], body["allowed"], body["reason"]) == (200, CEILING, False, "quota_exhausted")
        status, view = await gate.get("/v1/subjects/u1")
        assert status == 200 and [u["used"] for u in view["usage"] if u["meter"] == "requests"] == [CEILING], view
        assert (await count(gate, "/v1/usage", "u2", MAX_AMOUNT, "other"))[0] == 200

    async def test_a_count_past_64_bits_is_refused_not_a_503_for_ever(self, start_gate, database):
        """The reported failure: a window counted to within MAX_AMOUNT of 2**63 (as a gate before the ceiling
        could) and one more count of MAX_AMOUNT. It was a float on SQLite, and a 503 on every later count of the
        subject on PostgreSQL; it is refused, and the subject's checks and other meters' counts still answer."""
        gate = await start_gate(database=database, **BIG)
        assert (await count(gate, "/v1/usage", "o1", 1, "first"))[0] == 200
        near = 2**63 - MAX_AMOUNT
        await set_used(database, "o1", "requests", near)
        for attempt in range(3):
            refused(*await count(gate, "/v1/usage", "o1", MAX_AMOUNT, f"over-{attempt}"))
        status, body = await gate.consume("o1", 1, key="consume")
        assert (status, body["allowed"], body["counted"], body["used"]) == (200, False, False, near), body
        status, body = await gate.check("o1")
        assert status == 200 and type(body["used"]) is int and body["used"] == near, body
        assert await stored(database, "o1", "requests") == ([near], ["first"], 0)


class TestSpends:
    """Consumes and usage of a quota with unbounded overage (Store.spend), whose overage is reported to Stripe."""

    @pytest.fixture
    async def scale(self, start_gate, database, fake):  # noqa: F811
        gate = await start_gate(plan=AI, database=database, STRIPE_SECRET_KEY=KEY, STRIPE_API_BASE=fake.url,
                                **BIG, **QUIET)
        await deliver(gate, se.event("customer.subscription.created",
                                     subscription("s1", "account", "price_scale_yearly"), time.time() - 60))
        status, body = await gate.consume("s1", 1, key="first", meter="tokens")
        assert (status, body["allowed"]) == (200, True), body
        return gate

    async def test_overage_past_the_ceiling_is_refused_whole_with_no_report(self, scale, database):
        gate = scale
        await set_used(database, "s1", "tokens", CEILING - 5)
        status, body = await gate.consume("s1", 5, key="to-the-ceiling", meter="tokens")
        assert (status, body["allowed"], body["overage"], body["used"]) == (200, True, 5, CEILING), body
        refused(*await gate.consume("s1", 1, key="consume-past", meter="tokens"))
        refused(*await count(gate, "/v1/usage", "s1", MAX_AMOUNT, "usage-past", "tokens"))
        assert await stored(database, "s1", "tokens") == ([CEILING], ["first", "to-the-ceiling"], 1)
        status, body = await gate.post("/v1/check", {"subject": "s1", "meter": "tokens", "amount": 1})
        assert (status, body["used"]) == (200, CEILING), body
        status, body = await gate.consume("s1", 1, key="requests-still-count", meter="requests")
        assert status == 200, body

    async def test_a_spend_past_64_bits_is_refused_not_a_503(self, scale, database):
        gate = scale
        near = 2**63 - MAX_AMOUNT
        await set_used(database, "s1", "tokens", near)
        refused(*await count(gate, "/v1/usage", "s1", MAX_AMOUNT, "usage-over", "tokens"))
        refused(*await gate.consume("s1", MAX_AMOUNT, key="consume-over", meter="tokens"))
        assert await stored(database, "s1", "tokens") == ([near], ["first"], 0)


async def test_the_client_raises_the_refusal_and_still_decides(start_gate, database):
    """GateClient: a count past the ceiling is a GateRequestError (a 4xx: the caller's to handle), not a
    fail-mode decision made in the client; checks, local ones included, still answer."""
    gate = await start_gate(database=database, **BIG)
    assert (await count(gate, "/v1/usage", "c1", 1, "first"))[0] == 200
    await set_used(database, "c1", "requests", CEILING)
    async with GateClient(gate.url, TOKEN, timeout=5, local=True, staleness=2.0) as client:
        with pytest.raises(GateRequestError) as raised:
            await client.usage("c1", "requests", MAX_AMOUNT, "past")
        assert (raised.value.status, raised.value.code) == (422, "usage_ceiling")
        decision = await client.check("c1", "requests")
        assert (decision.used, decision.allowed, decision.reason) == (CEILING, False, "quota_exhausted")
    assert await stored(database, "c1", "requests") == ([CEILING], ["first"], 0)


async def test_a_count_sqlite_stored_as_a_float_before_the_ceiling_is_a_whole_number_after_migration_24(tmp_path):
    """What a gate before the ceiling left in a SQLite file: a window counted past 2**63 - 1, which SQLite stores as
    a REAL, and the idempotency key's answer beside it. Read back, it was a float in every answer of the subject;
    migration 24 makes it the ceiling, a whole number (a window below it keeps its count)."""
    database = str(tmp_path / "gate.sqlite3")
    store = open_store(database)
    await store.open()
    try:
        await store.migrate()
        f1 = StoredSubject(SubjectState("f1", "free", since=1.0, plan_version="v1"), 0)
        assert (await store.count(f1, "requests", 0, 5, None, "k1", 1.0)).counted
        f1 = await store.load("f1")
        assert (await store.count(f1, "requests", 60, 7, None, "k2", 61.0)).counted
        with sqlite3.connect(database) as db:
            db.execute("UPDATE quota_usage SET used = used + 9223372036854775807 WHERE window_start = 0")
            db.execute("UPDATE usage_keys SET used_after = used_after + 9223372036854775807 WHERE key = 'k1'")
            assert db.execute("SELECT typeof(used) FROM quota_usage WHERE window_start = 0").fetchone() == ("real",)
            db.execute("PRAGMA user_version = 23")
        assert type((await store.used("f1", [("requests", 0)]))[("requests", 0)]) is float     # as it was
        await store.migrate()
        with sqlite3.connect(database) as db:
            assert db.execute("SELECT window_start, used, typeof(used) FROM quota_usage ORDER BY window_start"
                              ).fetchall() == [(0, CEILING, "integer"), (60, 7, "integer")]
            assert db.execute("SELECT key, used_after, typeof(used_after) FROM usage_keys ORDER BY key").fetchall() \
                == [("k1", CEILING, "integer"), ("k2", 7, "integer")]
        used = await store.used("f1", [("requests", 0), ("requests", 60)])
        assert used == {("requests", 0): CEILING, ("requests", 60): 7}
        assert {type(n) for n in used.values()} == {int}
        again = await store.count(await store.load("f1"), "requests", 0, 5, None, "k1", 2.0)
        assert (again.duplicate, again.used, type(again.used)) == (True, CEILING, int)
    finally:
        await store.close()
