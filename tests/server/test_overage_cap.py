"""The overage a window bills never passes its quota's `overage: {up_to}`, through a running gate on both stores,
with what was billed read back from a Stripe-shaped meter endpoint on 127.0.0.1: a consume that would bill past
the cap is refused whole, usage that already ran is counted whole and billed only up to it, seats added within
the window do not open it again, and two PostgreSQL nodes racing on one subject bill exactly the cap."""
from __future__ import annotations

import asyncio
import time

import pytest

from plangate.engine import SubjectState
from plangate.server.store import StoredSubject, open_store
from plangate.server.store._credits import Spend

from . import stripe_events as se
from .stripe_meters import KEY, FakeStripe
from .test_entitlements import AI, QUIET, consume, database, deliver, subscription, view  # noqa: F401
from .test_overage_reports import fake, job  # noqa: F401

NOW = time.time()
SEAT = 1000         # tokens a month per seat on the Scale tier of the test's plan
CAP = 500           # the overage a month may bill
SCALE = "tokens: {limit: 20000000, per: month, anchor: billing, overage: unbounded}"


@pytest.fixture
def capped(tmp_path):
    """The AI example with the Scale tier's tokens per seat and their overage capped."""
    text = AI.read_text(encoding="utf-8")
    assert text.count(SCALE) == 1
    path = tmp_path / "ai-capped.yaml"
    path.write_text(text.replace(SCALE, f"tokens: {{limit: {SEAT}, per: month, anchor: billing, per_unit: quantity, "
                                        f"overage: {{up_to: {CAP}}}}}"), encoding="utf-8")
    return path


@pytest.fixture
def start(start_gate, capped, fake):
    async def run(database: str):
        return await start_gate(plan=capped, database=database, STRIPE_SECRET_KEY=KEY, STRIPE_API_BASE=fake.url,
                                **QUIET)
    return run


async def on_scale(gate, subject: str, seats: int = 1, at: float = NOW - 60, kind: str = "created") -> None:
    await deliver(gate, se.event(f"customer.subscription.{kind}",
                                 subscription(subject, "account", "price_scale_yearly", seats), at))


async def usage(gate, subject: str, amount: int, key: str) -> dict:
    status, answer = await gate.post("/v1/usage", {"subject": subject, "meter": "tokens", "amount": amount,
                                                   "idempotency_key": key})
    assert status == 200, answer
    return answer


async def billed(gate, fake: FakeStripe) -> int:
    """What Stripe's meter has been sent for the customer, once every report due has gone."""
    sent, retried, refused = await job(gate)
    assert (retried, refused) == (0, 0)
    assert all(e["payload"]["stripe_customer_id"] == "cus_1" for e in fake.events)
    return sum(int(e["payload"]["value"]) for e in fake.events)


class TestOneGate:
    async def test_a_consume_straddling_the_cap_is_refused_whole(self, start, database, fake):
        gate = await start(database)
        await on_scale(gate, "c1")
        assert (await consume(gate, "c1", "tokens", SEAT, key="fill"))["overage"] == 0
        assert (await consume(gate, "c1", "tokens", 400, key="a"))["overage"] == 400
        straddling = await consume(gate, "c1", "tokens", 200, key="b")      # 100 of it past the cap
        assert (straddling["allowed"], straddling["counted"], straddling["reason"], straddling["overage"]) == \
            (False, False, "quota_exhausted", 0), straddling
        last = await consume(gate, "c1", "tokens", 100, key="c")
        assert (last["allowed"], last["overage"], last["used"]) == (True, 100, SEAT + CAP)
        assert (await consume(gate, "c1", "tokens", 1, key="d"))["allowed"] is False
        assert await billed(gate, fake) == CAP

    async def test_usage_past_the_cap_is_counted_whole_and_billed_to_the_cap(self, start, database, fake):
        """/v1/usage counts work that already ran, whatever the quota says; its overage went to Stripe whole, past
        the cap the plan promises the customer."""
        gate = await start(database)
        await on_scale(gate, "u1")
        await usage(gate, "u1", SEAT, "fill")
        assert (await usage(gate, "u1", 300, "u-a"))["overage"] == 300
        past = await usage(gate, "u1", 400, "u-b")
        assert (past["counted"], past["overage"], past["used"]) == (True, CAP - 300, SEAT + 700), past
        assert (await usage(gate, "u1", 50, "u-c"))["overage"] == 0
        again = await usage(gate, "u1", 400, "u-b")
        assert (again["duplicate"], again["overage"]) == (True, CAP - 300)
        assert (await consume(gate, "u1", "tokens", 1, key="after"))["allowed"] is False
        assert sorted(r["value"] for r in (await view(gate, "u1"))["overage"]) == [200, 300]
        assert await billed(gate, fake) == CAP

    async def test_seats_added_within_the_window_do_not_open_the_cap_again(self, start, database, fake):
        """One seat: 1000 tokens, 300 past them billed. A second seat raises the limit to 2000 with 1300 used: the
        usage alone says nothing was billed, and 700 within the limit and 500 of overage went through (800 billed
        in a month capped at 500)."""
        gate = await start(database)
        await on_scale(gate, "s1", 1, NOW - 120)
        await consume(gate, "s1", "tokens", SEAT, key="fill")
        assert (await consume(gate, "s1", "tokens", 300, key="one-seat"))["overage"] == 300
        await on_scale(gate, "s1", 2, NOW - 60, "updated")
        refused = await consume(gate, "s1", "tokens", 1200, key="two-seats")
        assert (refused["allowed"], refused["counted"], refused["limit"]) == (False, False, 2 * SEAT), refused
        fits = await consume(gate, "s1", "tokens", 900, key="two-seats-fits")
        assert (fits["allowed"], fits["overage"], fits["used"]) == (True, CAP - 300, 2200), fits
        assert await billed(gate, fake) == CAP

    async def test_a_check_past_the_limit_says_what_the_consume_would(self, start, database, fake):
        """The check reads what the window billed as the consume does: after a second seat (limit 2000, 1500
        used, 500 billed) a check of 900 is refused as the consume is, where the usage alone said 400 of overage
        would fit."""
        gate = await start(database)
        await on_scale(gate, "k1", 1, NOW - 120)
        await consume(gate, "k1", "tokens", SEAT, key="fill")
        assert (await consume(gate, "k1", "tokens", CAP, key="to-the-cap"))["overage"] == CAP
        await on_scale(gate, "k1", 2, NOW - 60, "updated")
        status, checked = await gate.post("/v1/check", {"subject": "k1", "meter": "tokens", "amount": 900})
        assert status == 200
        consumed = await consume(gate, "k1", "tokens", 900, key="after")
        assert (checked["allowed"], checked["reason"], checked["overage"]) == (False, "quota_exhausted", 0), checked
        assert (consumed["allowed"], consumed["reason"]) == (False, "quota_exhausted"), consumed
        status, within = await gate.post("/v1/check", {"subject": "k1", "meter": "tokens", "amount": 500})
        assert (within["allowed"], within["overage"]) == (True, 0), within        # the rest of the second seat

    async def test_seats_removed_within_the_window_bill_no_more_than_the_cap(self, start, database, fake):
        gate = await start(database)
        await on_scale(gate, "s2", 2, NOW - 120)
        await consume(gate, "s2", "tokens", 1900, key="fill")
        await on_scale(gate, "s2", 1, NOW - 60, "updated")
        assert (await consume(gate, "s2", "tokens", 1, key="past"))["allowed"] is False     # 1900: past 1000 + 500
        ran = await usage(gate, "s2", 700, "ran")
        assert (ran["counted"], ran["overage"], ran["used"]) == (True, CAP, 2600), ran
        assert await billed(gate, fake) == CAP


class TestAcrossNodes:
    async def test_two_nodes_racing_near_the_cap_bill_exactly_the_cap(self, start, pg_dsn, fake):
        """Consumes and usage of one subject on two nodes at once, 1200 of overage asked for: every consume that
        went through billed its whole overage, usage was counted whole, and Stripe was sent the cap, no more."""
        first, second = await start(pg_dsn), await start(pg_dsn)
        await on_scale(first, "n1")
        await consume(first, "n1", "tokens", SEAT, key="fill")
        work = [consume(node, "n1", "tokens", 30, key=f"c{i}") if i % 2 else usage(node, "n1", 30, f"u{i}")
                for i in range(40) for node in ((first, second)[i // 2 % 2],)]
        answers = await asyncio.gather(*work)
        consumed = [a for i, a in enumerate(answers) if i % 2]
        ran = [a for i, a in enumerate(answers) if not i % 2]
        assert all(a["counted"] for a in ran)
        assert all(a["overage"] == 30 for a in consumed if a["counted"])
        assert sum(a["overage"] for a in answers) == CAP
        counted = sum(a["counted"] for a in consumed)
        assert (await consume(second, "n1", "tokens", 1, key="after"))["used"] == SEAT + 30 * (20 + counted)
        assert await billed(first, fake) == CAP
        assert await job(second) == [0, 0, 0]


async def execute(database: str, *sql: str) -> list[tuple]:
    """Run statements on the store's database itself (not through the store); the last one's rows."""
    rows: list[tuple] = []
    if database.startswith("postgresql://"):
        import asyncpg
        conn = await asyncpg.connect(database)
        try:
            for statement in sql:
                rows = [tuple(r) for r in await conn.fetch(statement)]
        finally:
            await conn.close()
        return rows
    import sqlite3
    with sqlite3.connect(database) as db:
        for statement in sql:
            rows = db.execute(statement).fetchall()
    return rows


class TestTheStore:
    async def test_what_a_window_billed_is_kept_beside_its_usage_and_bounds_the_next(self, database):
        """The store's spend (each store's own transaction) against a window with a cap of 100 and no report."""
        store = open_store(database)
        await store.open()
        try:
            await store.migrate()
            first = StoredSubject(SubjectState("w", "free", since=1.0, plan_version="v1"), 0)
            ran = await store.spend(first, "tokens", 0, 150, Spend(limit=10, ceiling=None, cap=100), "ran", 5.0)
            assert (ran.counted, ran.used, ran.overage, ran.billed) == (True, 150, 100, 100)
            current = await store.load("w")
            refused = await store.spend(current, "tokens", 0, 1, Spend(limit=10, ceiling=1000, cap=100), "c", 6.0)
            assert (refused.counted, refused.used, refused.billed) == (False, 150, 100)
            again = await store.spend(current, "tokens", 0, 150, Spend(limit=10, ceiling=None, cap=100), "ran", 7.0)
            assert (again.duplicate, again.overage) == (True, 100)
            unbounded = await store.spend(current, "tokens", 0, 5, Spend(limit=10, ceiling=None, cap=None), "u", 8.0)
            assert (unbounded.overage, unbounded.billed) == (5, 105)
        finally:
            await store.close()

    async def test_the_migration_reads_what_windows_billed_before_it_from_their_reports(self, database):
        """A store at schema 17: its windows' overage reports (each made with its count, in its window) say what
        each window billed; after the migration the cap counts them."""
        store = open_store(database)
        await store.open()
        try:
            await store.migrate()
            m1 = StoredSubject(SubjectState("m1", "free", since=1.0, plan_version="v1"), 0)
            assert (await store.count(m1, "requests", 0, 1, None, None, 1.0)).counted       # the subject stored
            reports = [("r1", "m1", "tokens", 1500.0, 7), ("r2", "m1", "tokens", 2100.0, 30),
                       ("r3", "m1", "tokens", 2200.0, 40), ("r4", "m1", "requests", 2100.0, 99),
                       ("r5", "m2", "tokens", 2100.0, 11)]
            await execute(database, *[
                "INSERT INTO overage_reports (identifier, subject, meter, event_name, value, at, next_attempt_at) "
                f"VALUES ('{i}', '{s}', '{m}', 'over', {v}, {at}, {at})" for i, s, m, at, v in reports], *[
                f"INSERT INTO quota_usage (subject, meter, window_start, used) VALUES ('m1', 'tokens', {w}, {u})"
                for w, u in ((1000, 17), (2000, 80), (3000, 0))])
            # Back to schema 17: what migrations 18 and later added, dropped.
            undo = ("ALTER TABLE quota_usage DROP COLUMN billed", "ALTER TABLE credit_grants DROP COLUMN tier_since",
                    "ALTER TABLE console_sessions DROP COLUMN token_mac")
            if database.startswith("postgresql://"):
                await execute(database, *undo, "DELETE FROM plangate_schema WHERE version >= 18")
            else:
                await execute(database, *undo, "PRAGMA user_version = 17")
            await store.migrate()
            assert await execute(database, "SELECT meter, window_start, billed FROM quota_usage WHERE subject = 'm1' "
                                           "ORDER BY meter, window_start") == \
                [("requests", 0, 99), ("tokens", 1000, 7), ("tokens", 2000, 70), ("tokens", 3000, 0)]
            await execute(database, "DELETE FROM quota_usage WHERE window_start = 3000")
            ran = await store.spend(await store.load("m1"), "tokens", 2000, 50, Spend(limit=10, ceiling=None, cap=100), "k", 2300.0)
            assert (ran.used, ran.overage, ran.billed) == (130, 30, 100)
        finally:
            await store.close()
