"""A waiting event whose adoption failed after its link committed: adopted later, once, whatever failed between.

The linking delivery commits the link, then fails to fold in the invoice that waited for it (the database refuses
the write, or a lock held by another connection outlasts the store's timeout): it is answered 500. Stripe delivers
it again (a duplicate), and the sweep runs: either adopts the invoice, once, and the other finds nothing left.
"""
from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time

import pytest

from plangate.server.logs import capture_logs
from plangate.server.stripe import adoption, ingest
from tests import postgres

from . import stripe_events as se
from .personal_store import rows
from .store_locks import writes_held
from .test_webhook import deliver, status_of

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def store_url(each_database) -> str:
    """The store of the test's gates: each kind."""
    return each_database


@pytest.fixture
async def hook(start_gate, store_url):
    # PostgreSQL: a statement waiting for a lock fails after 1 s (the timeout that fails the adoption below).
    return await start_gate(STRIPE_WEBHOOK_SECRET=se.SECRET, database=store_url, PLANGATE_PG_COMMAND_TIMEOUT="1")


@contextlib.asynccontextmanager
async def adoption_refused(database: str, *event_ids: str):
    """While open, a write of these (pending) events' rows fails for real, and nothing else does: the adoption
    that folds them in fails after the link that places them committed. PostgreSQL: another connection holds
    their rows' locks past the store's command timeout. SQLite (one writer at a time: a lock would hold the link
    back too): a trigger refuses the update."""
    if database.startswith("postgresql://"):
        async with writes_held(database, "SELECT 1 FROM subscription_events WHERE event_id = ANY($1::text[]) "
                                         "FOR UPDATE", list(event_ids)):
            yield
        return
    db = sqlite3.connect(database, isolation_level=None)
    quoted = ", ".join("'" + e.replace("'", "''") + "'" for e in event_ids)     # a trigger takes no parameters
    db.execute(f"CREATE TRIGGER refuse_adoption BEFORE UPDATE ON subscription_events WHEN OLD.event_id IN "
               f"({quoted}) BEGIN SELECT RAISE(ABORT, 'refused by the test'); END")
    try:
        yield
    finally:
        db.execute("DROP TRIGGER refuse_adoption")
        db.close()


async def adopted_late(hook, by: str) -> float:
    _, text = await hook.get("/metrics")
    line = f'plangate_events_adopted_late_total{{by="{by}"}} '
    return next((float(x.split()[-1]) for x in text.splitlines() if x.startswith(line)), 0.0)


async def outcomes(database: str) -> list[tuple]:
    return await rows(database, "SELECT type, outcome, subject FROM subscription_events ORDER BY created, event_id")


async def moves(database: str) -> list[tuple]:
    return await rows(database, "SELECT subject, from_status, to_status FROM transitions ORDER BY id")


async def link_whose_adoption_fails(hook, subject: str = "alice", customer: str = "cus_1", sub: str = "sub_1",
                                    at: float | None = None) -> tuple[dict, dict]:
    """An invoice paid before its subscription is linked (kept pending), then the checkout that links it,
    answered 500 because folding the invoice in failed after the link committed. (checkout, invoice)."""
    now = at or time.time()
    invoice = se.event("invoice.paid", se.invoice("paid", sub_id=sub, customer=customer, inv_id=f"in_{subject}"),
                       now - 10)
    status, answer = await deliver(hook, invoice)
    assert (status, answer["outcome"]) == (200, "pending")
    checkout = se.event("checkout.session.completed", se.checkout(subject, customer, sub), now - 20)
    async with adoption_refused(hook.database, invoice["id"]):
        status, answer = await deliver(hook, checkout)
    assert (status, answer["error"]) == (500, "store_unavailable")
    assert await status_of(hook, subject) == "paid_trial"     # linked, the paid invoice not folded in
    assert ("invoice.paid", "pending", None) in await outcomes(hook.database)
    return checkout, invoice


LINKED_AND_PAID = [("alice", "limited_free_trial", "paid_trial"), ("alice", "paid_trial", "paid")]


class TestRedelivery:
    async def test_the_linking_events_redelivery_adopts_what_waits_once(self, hook):
        checkout, _ = await link_whose_adoption_fails(hook)

        status, answer = await deliver(hook, checkout)
        assert status == 200
        assert (answer["outcome"], answer["duplicate"], answer["subject"], answer["status"]) == \
            ("duplicate", True, "alice", "paid")
        assert await status_of(hook, "alice") == "paid"
        assert await outcomes(hook.database) == [("checkout.session.completed", "applied", "alice"),
                                                 ("invoice.paid", "applied", "alice")]
        assert await moves(hook.database) == LINKED_AND_PAID
        assert await adopted_late(hook, "redelivery") == 1

        # Nothing is left: the sweep and a third delivery adopt nothing.
        assert (await hook.post("/v1/jobs/sweep"))[0] == 200
        status, answer = await deliver(hook, checkout)
        assert (status, answer["duplicate"], answer["subject"], answer["status"]) == (200, True, None, None)
        assert await moves(hook.database) == LINKED_AND_PAID
        assert (await adopted_late(hook, "redelivery"), await adopted_late(hook, "sweep")) == (1, 0)

    async def test_the_waiting_events_own_redelivery_adopts_it(self, hook):
        _, invoice = await link_whose_adoption_fails(hook)

        status, answer = await deliver(hook, invoice)
        assert (status, answer["duplicate"], answer["subject"], answer["status"]) == (200, True, "alice", "paid")
        assert await moves(hook.database) == LINKED_AND_PAID
        status, answer = await deliver(hook, invoice)
        assert (status, answer["duplicate"], answer["status"]) == (200, True, None)
        assert await moves(hook.database) == LINKED_AND_PAID
        assert await adopted_late(hook, "redelivery") == 1

    async def test_a_duplicate_whose_events_no_link_places_adopts_nothing(self, hook):
        """Still waiting for its link: a repeat delivery keeps it pending (and answers as before)."""
        invoice = se.event("invoice.paid", se.invoice("paid", sub_id="sub_x", customer="cus_x"), time.time())
        assert (await deliver(hook, invoice))[1]["outcome"] == "pending"
        status, answer = await deliver(hook, invoice)
        assert (status, answer["duplicate"], answer["subject"]) == (200, True, None)
        assert await outcomes(hook.database) == [("invoice.paid", "pending", None)]


class TestSweep:
    async def test_the_sweep_adopts_it_once_when_no_redelivery_comes(self, hook):
        checkout, _ = await link_whose_adoption_fails(hook)

        with capture_logs("INFO") as logs:
            status, answer = await hook.post("/v1/jobs/sweep")
        assert (status, answer["result"]) == (200, 0)         # the result counts timers moved
        assert await status_of(hook, "alice") == "paid"
        assert await moves(hook.database) == LINKED_AND_PAID
        assert await adopted_late(hook, "sweep") == 1
        batches = [e for e in logs.entries if e["event"] == "pending_adopted_late"]
        assert [(e["by"], e["found"], e["adopted"], e["subjects"], e["failed"]) for e in batches] == \
            [("sweep", 1, 1, 1, 0)]

        # A second run, and then the linking event's redelivery, find nothing left.
        with capture_logs("INFO") as logs:
            assert (await hook.post("/v1/jobs/sweep"))[0] == 200
        assert not [e for e in logs.entries if e["event"] == "pending_adopted_late"]
        status, answer = await deliver(hook, checkout)
        assert (status, answer["duplicate"], answer["subject"]) == (200, True, None)
        assert await moves(hook.database) == LINKED_AND_PAID
        assert (await adopted_late(hook, "sweep"), await adopted_late(hook, "redelivery")) == (1, 0)

    async def test_batches_in_created_order_each_subject_adopted_once(self, hook, monkeypatch):
        monkeypatch.setattr(adoption, "ADOPT_BATCH", 2)
        now = time.time()
        # Linked in this order; their invoices were paid carol first, then alice, then bob.
        for subject, at in (("alice", now - 100), ("bob", now), ("carol", now - 200)):
            await link_whose_adoption_fails(hook, subject, f"cus_{subject}", f"sub_{subject}", at)
        with capture_logs("INFO") as logs:
            assert (await hook.post("/v1/jobs/sweep"))[0] == 200
        batches = [(e["found"], e["adopted"]) for e in logs.entries if e["event"] == "pending_adopted_late"]
        assert batches == [(2, 2), (1, 1)]
        paid = [subject for subject, _, to in await moves(hook.database) if to == "paid"]
        assert paid == ["carol", "alice", "bob"]
        assert {s: await status_of(hook, s) for s in paid} == dict.fromkeys(paid, "paid")
        assert await adopted_late(hook, "sweep") == 3
        assert (await hook.post("/v1/jobs/sweep"))[0] == 200
        assert len(await moves(hook.database)) == 6 and await adopted_late(hook, "sweep") == 3

    async def test_a_subject_whose_adoption_fails_again_waits_for_the_next_sweep_without_holding_the_others(
            self, hook):
        _, first = await link_whose_adoption_fails(hook, "alice", "cus_a", "sub_a", time.time() - 100)
        await link_whose_adoption_fails(hook, "bob", "cus_b", "sub_b")
        with capture_logs("INFO") as logs:
            async with adoption_refused(hook.database, first["id"]):
                assert (await hook.post("/v1/jobs/sweep"))[0] == 200
        assert (await status_of(hook, "alice"), await status_of(hook, "bob")) == ("paid_trial", "paid")
        failed = [(e["subject"], e["event_id"]) for e in logs.entries if e["event"] == "adoption_failed"]
        assert failed == [("alice", first["id"])]
        _, metrics = await hook.get("/metrics")
        assert 'plangate_sweep_subject_failures_total{stage="adopt"} 1.0' in metrics
        assert (await hook.post("/v1/jobs/sweep"))[0] == 200
        assert (await status_of(hook, "alice"), await status_of(hook, "bob")) == ("paid", "paid")
        assert await adopted_late(hook, "sweep") == 2

    async def test_subjects_failing_at_every_sweep_do_not_keep_the_events_after_them_waiting(self, hook, monkeypatch):
        """A pass ends after MAX_FAILURES failed subjects (one here); the next starts after where it stopped, and
        one that reached the end leaves the next to start from the beginning again."""
        monkeypatch.setattr(adoption, "MAX_FAILURES", 1)
        _, first = await link_whose_adoption_fails(hook, "alice", "cus_a", "sub_a", time.time() - 100)
        await link_whose_adoption_fails(hook, "bob", "cus_b", "sub_b")
        async with adoption_refused(hook.database, first["id"]):
            assert (await hook.post("/v1/jobs/sweep"))[0] == 200     # alice fails: the pass ends before bob
            assert (await status_of(hook, "alice"), await status_of(hook, "bob")) == ("paid_trial", "paid_trial")
            assert (await hook.post("/v1/jobs/sweep"))[0] == 200     # from after alice: bob
            assert (await status_of(hook, "alice"), await status_of(hook, "bob")) == ("paid_trial", "paid")
        assert (await hook.post("/v1/jobs/sweep"))[0] == 200         # from the beginning again: alice
        assert (await status_of(hook, "alice"), await status_of(hook, "bob")) == ("paid", "paid")
        assert await adopted_late(hook, "sweep") == 2


async def test_a_waiting_events_own_look_that_never_came_is_made_by_its_redelivery(start_gate, pg_dsn, monkeypatch):
    """PostgreSQL, where a delivery's write waits alone: the invoice looks for its subject before the link, its
    insert waits (another connection locks the payments it writes), the checkout links the subject and finds
    nothing waiting yet, and the invoice's budget runs out before its second look (500). Its insert lands once
    the lock goes: pending, placed by a link, adopted by nobody. Its redelivery adopts it, once."""
    hook = await start_gate(STRIPE_WEBHOOK_SECRET=se.SECRET, database=pg_dsn)
    monkeypatch.setattr(ingest, "WEBHOOK_STORE_TIMEOUT", 1.0)
    now = time.time()
    invoice = se.event("invoice.paid", se.invoice("paid"), now - 10)
    async with writes_held(pg_dsn, "LOCK TABLE payments IN EXCLUSIVE MODE") as queued:
        paid = asyncio.create_task(deliver(hook, invoice))
        await queued(1)
        status, answer = await deliver(hook, se.event("checkout.session.completed", se.checkout("alice"), now - 20))
        assert (status, answer["status"]) == (200, "paid_trial")
        assert (await paid)[0] == 500

    async def stored_pending() -> bool:
        return await rows(pg_dsn, "SELECT outcome FROM subscription_events WHERE event_id = ?", invoice["id"]) == \
            [("pending",)]
    assert await postgres.await_until(stored_pending, timeout=5)
    assert await status_of(hook, "alice") == "paid_trial"

    status, answer = await deliver(hook, invoice)
    assert (status, answer["duplicate"], answer["status"]) == (200, True, "paid")
    assert (await hook.post("/v1/jobs/sweep"))[0] == 200
    assert await moves(pg_dsn) == LINKED_AND_PAID
    assert (await adopted_late(hook, "redelivery"), await adopted_late(hook, "sweep")) == (1, 0)


async def test_two_nodes_sweeping_and_a_redelivery_at_once_adopt_it_once(start_gate, pg_dsn):
    """Two gates on one PostgreSQL database: both sweep (one at a time: the job's advisory lock) while the
    linking event is delivered again to one of them; the invoice is folded in once (the subject's version)."""
    a = await start_gate(STRIPE_WEBHOOK_SECRET=se.SECRET, database=pg_dsn, PLANGATE_PG_COMMAND_TIMEOUT="1")
    b = await start_gate(STRIPE_WEBHOOK_SECRET=se.SECRET, database=pg_dsn)
    checkout, _ = await link_whose_adoption_fails(a)

    answers = await asyncio.gather(a.post("/v1/jobs/sweep"), b.post("/v1/jobs/sweep"), deliver(b, checkout),
                                   a.post("/v1/jobs/sweep"))
    # A sweep asked of a node while the other runs it is told so (409 job_running); one of them ran.
    sweeps = [answers[0][0], answers[1][0], answers[3][0]]
    assert answers[2][0] == 200 and 200 in sweeps and set(sweeps) <= {200, 409}, answers
    assert await moves(pg_dsn) == LINKED_AND_PAID
    assert await outcomes(pg_dsn) == [("checkout.session.completed", "applied", "alice"),
                                      ("invoice.paid", "applied", "alice")]
    counted = [await adopted_late(node, by) for node in (a, b) for by in ("sweep", "redelivery")]
    assert sum(counted) == 1
    assert (await status_of(a, "alice"), await status_of(b, "alice")) == ("paid", "paid")

