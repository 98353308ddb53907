"""The store contract, run against both implementations (a real SQLite file and a real PostgreSQL
database): migrations, atomic counting, optimistic concurrency, batches. SQLite's own settings last."""
from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
import threading

import asyncpg
import pytest

from plangate.engine import SubjectState, Subscription
from plangate.engine._credits import Grant, GrantSource
from tests import postgres
from plangate.server.store import (AuditEntry, Change, Counted, DuplicateEvent, EventRecord, IdempotencyConflict,
                                   SQLiteStore, StoredSubject, StoreError, USAGE_CEILING, UsageCeiling, open_store)
from plangate.server.store import _sqlite_connections
from plangate.server.store._credits import Spend
from plangate.server.store._postgres import PostgresStore
from plangate.server.store._migrations import migrations, statements
from plangate.server.store._personal import numbered
from plangate.server.store._base import state_from_json, state_json


@pytest.fixture
async def pg_store(pg_dsn):
    s = open_store(pg_dsn)
    await s.open()
    await s.migrate()
    yield s
    await s.close()


@pytest.fixture
async def sqlite_store(tmp_path):
    s = SQLiteStore(str(tmp_path / "store.sqlite3"))
    await s.open()
    await s.migrate()
    yield s
    await s.close()


def fresh(subject="u", status="limited_free_trial") -> StoredSubject:
    return StoredSubject(SubjectState(subject, status, since=100.0, plan_version="v1"), 0)


class TestSQLiteSettings:
    async def test_pragmas_and_indexes(self, sqlite_store):
        store = sqlite_store
        with sqlite3.connect(store.path) as db:
            assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            indexes = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {"subscriptions_by_timer", "subscriptions_by_customer", "subscriptions_by_subscription",
                "transitions_by_subject", "quota_usage_by_window"} <= indexes
        assert "subscriptions_by_status" not in indexes      # no query read it; every status change wrote it
        # The loop's connections never wait inside SQLite (a lock is waited out asleep); the writer's thread
        # (migrations, batches) waits in SQLite, up to its busy timeout.
        assert store._loop_db.execute("PRAGMA foreign_keys").fetchone() == (1,)
        assert store._loop_db.execute("PRAGMA busy_timeout").fetchone() == (0,)
        assert (await store._writer.fetch_all("PRAGMA foreign_keys"))[0] == (1,)
        assert (await store._writer.fetch_all("PRAGMA busy_timeout"))[0][0] > 0
        # The writer's connection lives on a thread of its own, not the loop's.
        assert await store._writer.run(lambda _: threading.get_ident()) != threading.get_ident()

    async def test_closing_the_store_ends_its_threads(self, tmp_path):
        store = SQLiteStore(str(tmp_path / "store.sqlite3"))
        await store.open()
        await store.migrate()
        assert [t for t in threading.enumerate() if t.name.startswith("plangate-sqlite")]
        await store.close()
        for _ in range(100):
            if not [t for t in threading.enumerate() if t.name.startswith("plangate-sqlite")]:
                break
            await asyncio.sleep(0.01)
        assert not [t.name for t in threading.enumerate() if t.name.startswith("plangate-sqlite")]

    async def test_concurrent_counts_share_transactions_and_fail_alone(self, sqlite_store):
        """Group commit: counts that queue together go in one transaction (SQLite's own trace of the
        writer's statements counts the BEGINs); a count refused inside the group fails alone."""
        store = sqlite_store
        await store.commit(Change(fresh(), 0))
        current = await store.load("u")
        await store.count(current, "requests", 0, 1, None, "taken", 100.0)
        statements: list[str] = []
        store._loop_db.set_trace_callback(statements.append)
        results = await asyncio.gather(*(store.count(current, "requests", 0, 1, None, f"k{i}", 100.0)
                                         for i in range(40)),
                                       store.count(current, "requests", 0, 2, None, "taken", 100.0),
                                       return_exceptions=True)
        store._loop_db.set_trace_callback(None)
        assert isinstance(results[-1], IdempotencyConflict)
        assert all(r.counted and not r.duplicate for r in results[:-1])
        assert sorted(r.used for r in results[:-1]) == list(range(2, 42))
        assert await store.used("u", [("requests", 0)]) == {("requests", 0): 41}
        assert 1 <= statements.count("BEGIN IMMEDIATE") <= 4 and statements.count("COMMIT") >= 1

    async def test_concurrent_webhook_commits_share_transactions_and_fail_alone(self, sqlite_store):
        """Group commit for every small write: events of 30 subjects committed at once share transactions; an
        event stored already fails alone (DuplicateEvent), its subject's row rolled back with it."""
        store = sqlite_store

        def change(subject: str, event_id: str) -> Change:
            event = EventRecord(event_id, "checkout.session.completed", 1.0, "{}", "applied", "", subject)
            return Change(fresh(subject), 0, new_events=(event,))

        assert await store.commit(change("first", "evt_taken"))
        statements: list[str] = []
        store._loop_db.set_trace_callback(statements.append)
        results = await asyncio.gather(*(store.commit(change(f"s{i}", f"evt_{i}")) for i in range(30)),
                                       store.commit(change("late", "evt_taken")), return_exceptions=True)
        store._loop_db.set_trace_callback(None)
        assert results[:-1] == [True] * 30 and isinstance(results[-1], DuplicateEvent)
        assert all([await store.load(f"s{i}") for i in range(30)]) and await store.load("late") is None
        assert 1 <= statements.count("BEGIN IMMEDIATE") <= 4

    async def test_the_wal_is_checkpointed_beside_the_writer_not_in_its_commits(self, tmp_path):
        store = SQLiteStore(str(tmp_path / "store.sqlite3"), checkpoint_interval=0.05)
        await store.open()
        try:
            await store.migrate()
            assert (await store._writer.fetch_all("PRAGMA wal_autocheckpoint"))[0] == (0,)
            written: list[str] = []
            checkpointed: list[str] = []
            await store._writer.run(sqlite3.Connection.set_trace_callback, written.append)
            store._loop_db.set_trace_callback(written.append)
            await store._checkpoints.connection.run(sqlite3.Connection.set_trace_callback, checkpointed.append)
            await store.commit(Change(fresh(), 0))
            await asyncio.sleep(0.3)
            assert "PRAGMA wal_checkpoint(PASSIVE)" in checkpointed
            assert not [sql for sql in written if "checkpoint" in sql]      # a small WAL: the writer never waits
            with sqlite3.connect(tmp_path / "store.sqlite3") as db:     # every frame already copied
                _, frames, copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            assert frames == copied
            assert await store.commit(Change(fresh("v"), 0))      # the writer still commits after a checkpoint
        finally:
            await store.close()
        assert store._checkpoints._task is None
        with pytest.raises(StoreError):
            await store._checkpoints.connection.fetch_all("SELECT 1")

    async def test_a_wal_past_its_limit_is_checkpointed_by_the_writer_and_starts_over(self, tmp_path, monkeypatch):
        monkeypatch.setattr(_sqlite_connections, "WAL_RESTART_FRAMES", 1)
        store = SQLiteStore(str(tmp_path / "store.sqlite3"), checkpoint_interval=0.05)
        await store.open()
        try:
            await store.migrate()
            written: list[str] = []
            await store._writer.run(sqlite3.Connection.set_trace_callback, written.append)
            for i in range(20):
                await store.commit(Change(fresh(f"s{i}"), 0))
            await asyncio.sleep(0.3)
            assert "PRAGMA wal_checkpoint(PASSIVE)" in written
            assert await store.commit(Change(fresh("last"), 0))     # this write starts the WAL over
            with sqlite3.connect(tmp_path / "store.sqlite3") as db:
                _, frames, _ = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            assert 0 < frames < 10, frames
        finally:
            await store.close()

    async def test_a_lock_held_elsewhere_is_waited_out_asleep_then_the_write_commits(self, sqlite_store):
        """Another process's write lock: the count waits (the loop meanwhile serves reads), commits once the
        lock is gone; a count whose caller gave up while it waited is never run."""
        store = sqlite_store
        await store.commit(Change(fresh(), 0))
        current = await store.load("u")
        other = sqlite3.connect(store.path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            counting = asyncio.ensure_future(store.count(current, "requests", 0, 1, None, "waited", 100.0))
            given_up = asyncio.ensure_future(store.count(current, "requests", 0, 5, None, "given-up", 100.0))
            started = asyncio.get_running_loop().time()
            await asyncio.sleep(0.2)
            assert not counting.done() and not given_up.done()
            assert (await store.load("u")).version == 1        # reads go on meanwhile, without delay,
            assert not store._loop_db.in_transaction            # on a connection no group holds half done
            assert asyncio.get_running_loop().time() - started < 0.5
            given_up.cancel()
            other.execute("COMMIT")
            done = await asyncio.wait_for(counting, 2)
        finally:
            other.close()
        assert (done.counted, done.used) == (True, 1)
        assert given_up.cancelled()
        assert await store.used("u", [("requests", 0)]) == {("requests", 0): 1}
        assert (await store.count(current, "requests", 0, 5, None, "given-up", 100.0)).duplicate is False

    async def test_a_lock_held_past_the_busy_timeout_is_a_store_error(self, sqlite_store, monkeypatch):
        monkeypatch.setattr(_sqlite_connections, "BUSY_TIMEOUT_MS", 100)
        store = sqlite_store
        other = sqlite3.connect(store.path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StoreError, match="locked"):
                await asyncio.wait_for(store.commit(Change(fresh(), 0)), 2)
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert await store.commit(Change(fresh(), 0))       # and the store works again at once

    async def test_the_search_for_doubtful_subjects_runs_on_the_writers_thread(self, sqlite_store):
        """It visits every subscribed subject: on the loop it would hold every request meanwhile."""
        store = sqlite_store
        subscribed = StoredSubject(fresh().state, 0, "cus_1", "sub_1")
        assert await store.commit(Change(subscribed, 0))
        on_thread: list[str] = []
        on_loop: list[str] = []
        await store._writer.run(sqlite3.Connection.set_trace_callback, on_thread.append)
        store._loop_db.set_trace_callback(on_loop.append)
        found = await store.doubtful(("billing_problem",), 1e12, 10)
        assert [s.state.subject for s in found] == ["u"]
        assert any("COALESCE(confirmed_at" in sql for sql in on_thread)
        assert not any("COALESCE(confirmed_at" in sql for sql in on_loop)

    async def test_commits_that_fsync_run_on_the_writers_thread(self, tmp_path):
        store = SQLiteStore(str(tmp_path / "store.sqlite3"), synchronous="FULL")
        await store.open()
        try:
            await store.migrate()
            on_thread: list[str] = []
            on_loop: list[str] = []
            await store._writer.run(sqlite3.Connection.set_trace_callback, on_thread.append)
            store._loop_db.set_trace_callback(on_loop.append)
            results = await asyncio.gather(*(store.commit(Change(fresh(f"s{i}"), 0)) for i in range(10)))
            assert results == [True] * 10 and "BEGIN IMMEDIATE" in on_thread and "BEGIN IMMEDIATE" not in on_loop
            assert await store.load("s3") is not None and on_loop        # reads stay on the loop
            assert (await store._writer.fetch_all("PRAGMA synchronous"))[0] == (2,)
        finally:
            await store.close()

    async def test_an_unopenable_path_is_a_store_error(self, tmp_path):
        (tmp_path / "file").write_text("x")
        s = SQLiteStore(str(tmp_path / "file" / "db.sqlite3"))
        with pytest.raises(StoreError):
            await s.open()


class TestSchema:
    async def test_migrate_is_idempotent(self, store):
        latest = max(number for number, _, _ in migrations("sqlite"))
        assert latest == max(number for number, _, _ in migrations("postgresql"))
        assert await store.migrate() == (latest, latest)

    async def test_overage_reports_are_read_by_status_and_time_through_an_index(self, store):
        """Reports are kept for good, one a piece of overage work: reconciliation's day of sent reports, the newest
        of a status and a resend of refused ones scanned the whole table (on SQLite, on the writer's thread)."""
        from plangate.server.store import _credits as sql
        postgresql = isinstance(store, PostgresStore)
        queries = [(sql.sent_totals("floor({} / 60)" if postgresql else "CAST({} / 60 AS INTEGER)"), (0.0,) * 5),
                   (sql.REPORTS_BY_STATUS, ("refused", 100)),
                   sql.resend_refused({}, 0.0, 0.0, "resent", 2000)]
        if postgresql:
            conn = await asyncpg.connect(store.dsn)
            try:
                await conn.execute("SET enable_seqscan = off")      # a table this small would be read whole
                plans = [[row[0] for row in await conn.fetch("EXPLAIN " + numbered(q), *args)] for q, args in queries]
            finally:
                await conn.close()
        else:
            with sqlite3.connect(store.path) as db:
                plans = [[row[3] for row in db.execute("EXPLAIN QUERY PLAN " + q, args)] for q, args in queries]
        for (query, _), plan in zip(queries, plans):
            assert any("overage_reports_by_status" in line for line in plan), (query, plan)

    async def test_a_sqlite_migration_sees_the_schema_as_another_connection_left_it(self, tmp_path):
        """The store's connection kept its copy of the schema: after another connection had dropped a column (a
        schema put back by hand), the migration adding it again was refused as a duplicate column."""
        latest = max(number for number, _, _ in migrations("sqlite"))
        store = open_store(str(tmp_path / "store.sqlite3"))
        await store.open()
        await store.migrate()
        with sqlite3.connect(store.path) as db:
            db.execute("ALTER TABLE quota_usage DROP COLUMN billed")
            db.execute("ALTER TABLE credit_grants DROP COLUMN tier_since")
            db.execute("ALTER TABLE console_sessions DROP COLUMN token_mac")
            db.execute("PRAGMA user_version = 17")
        try:
            assert await store.migrate() == (17, latest)
        finally:
            await store.close()
        with sqlite3.connect(store.path) as db:
            assert "billed" in {row[1] for row in db.execute("PRAGMA table_info(quota_usage)")}

    def test_a_migration_splits_at_semicolons_outside_dollar_quoted_bodies(self):
        sql = "CREATE TABLE a (x INT); -- one; two\nCREATE FUNCTION f() AS $$BEGIN x; y; END$$;\nDROP TABLE a;"
        assert statements(sql) == ["CREATE TABLE a (x INT)", "CREATE FUNCTION f() AS $$BEGIN x; y; END$$",
                                   "DROP TABLE a"]

    async def test_a_closed_store_raises_store_error(self, store):
        await store.close()
        with pytest.raises(StoreError):
            await store.load("u")

    async def test_an_unreachable_postgresql_is_a_store_error(self):
        s = open_store(f"postgresql://postgres@127.0.0.1:{_free_port()}/none", connect_timeout=1.0)
        with pytest.raises(StoreError):
            await s.open()


class TestCounting:
    async def test_first_count_stores_the_subject(self, store):
        done = await store.count(fresh(), "requests", 0, 3, 10, None, 100.0)
        assert (done.counted, done.used) == (True, 3)
        assert (await store.load("u")).version == 1

    async def test_limit_is_enforced_in_the_database(self, store):
        await store.count(fresh(), "requests", 0, 8, 10, None, 100.0)
        current = await store.load("u")
        refused = await store.count(current, "requests", 0, 3, 10, None, 100.0)
        assert (refused.counted, refused.used) == (False, 8)
        assert (await store.count(current, "requests", 0, 2, 10, None, 100.0)).used == 10

    async def test_a_first_count_past_the_limit_writes_no_window(self, store):
        refused = await store.count(fresh(), "requests", 0, 11, 10, None, 100.0)
        assert (refused.counted, refused.used) == (False, 0)
        assert await store.used("u", [("requests", 0)]) == {("requests", 0): 0}
        current = await store.load("u") or fresh()       # a refused first count stores nothing
        assert (await store.count(current, "requests", 0, 10, 10, None, 100.0)).used == 10

    async def test_no_limit_counts_past_anything(self, store):
        done = await store.count(fresh(), "requests", 0, 50, None, None, 100.0)
        assert done.counted and done.used == 50

    async def test_stale_version_is_a_conflict_and_writes_nothing(self, store):
        await store.count(fresh(), "requests", 0, 1, 10, None, 100.0)
        stale = StoredSubject(fresh().state, 7)
        done = await store.count(stale, "requests", 0, 1, 10, "k", 100.0)
        assert done.conflict and not done.counted
        assert (await store.used("u", [("requests", 0)])) == {("requests", 0): 1}

    async def test_a_refused_count_keeps_no_key(self, store):
        """Refused by the quota (or by an amount past the limit), the count stores nothing: its key counts later
        work as new, not as a repeat of the refusal."""
        await store.count(fresh(), "requests", 0, 8, 10, "a", 100.0)
        current = await store.load("u")
        assert (await store.count(current, "requests", 0, 3, 10, "b", 100.0)).counted is False
        assert (await store.count(current, "requests", 0, 11, 10, "c", 100.0)) == Counted(False, 8)
        for key in ("b", "c"):
            done = await store.count(current, "requests", 0, 1, 10, key, 100.0)
            assert done.counted and not done.duplicate
        assert await store.used("u", [("requests", 0)]) == {("requests", 0): 10}

    async def test_a_first_count_stores_its_subject_only_with_the_count(self, store):
        """The first count of a subject not stored yet: refused (by the quota, or by a limit of 0, a status
        that denies), it stores neither key nor subject; counted, a repeat of its key, even as a first count, is
        a duplicate."""
        assert (await store.count(fresh(), "requests", 0, 11, 10, "f", 100.0)).counted is False
        assert (await store.count(fresh(), "requests", 0, 1, 0, "f", 100.0)).counted is False
        assert await store.load("u") is None
        first = await store.count(fresh(), "requests", 0, 4, 10, "f", 100.0)
        assert (first.counted, first.duplicate, first.used) == (True, False, 4)
        again = await store.count(fresh(), "requests", 0, 4, 10, "f", 100.0)
        assert (again.duplicate, again.used) == (True, 4)
        assert await store.used("u", [("requests", 0)]) == {("requests", 0): 4}

    async def test_a_first_count_on_a_row_another_writer_stored_meanwhile_is_a_conflict(self, store):
        """The gate read no row (version 0) and decided by the initial status; meanwhile a webhook stored the
        subject in a status that denies. The count (or spend) is a conflict, for the gate to decide again on the
        stored row, and writes nothing; a key it repeats is still answered as a repeat. PostgreSQL counted it."""
        closed = StoredSubject(SubjectState("u", "closed", since=101.0, plan_version="v1"), 0)
        assert await store.commit(Change(closed, 0))
        done = await store.count(fresh(), "requests", 0, 1, 20, "k", 200.0)
        assert (done.conflict, done.counted) == (True, False)
        spent = await store.spend(fresh(), "requests", 0, 1, Spend(limit=20, ceiling=20), "s", 200.0)
        assert (spent.conflict, spent.counted) == (True, False)
        assert (await store.used("u", [("requests", 0)])).get(("requests", 0), 0) == 0
        current = await store.load("u")
        assert current.version == 1 and current.state.status == "closed"
        assert (await store.count(current, "requests", 0, 1, 20, "k", 200.0)).counted
        again = await store.count(fresh(), "requests", 0, 1, 20, "k", 200.0)
        assert (again.duplicate, again.used) == (True, 1)

    async def test_a_refused_first_spend_stores_nothing(self, store):
        """Past its limit and its credits, a subject's first spend writes nothing: not the subject's row, not the
        window's grants (SQLite kept both, PostgreSQL neither)."""
        tier = Grant("period:requests:0", "requests", 10, 10, 100, 0.0, 10_000.0, GrantSource.PERIOD)
        done = await store.spend(fresh(), "requests", 0, 100, Spend(limit=5, ceiling=5, credits=True,
                                                                    grants=(tier,)), "k", 200.0)
        assert (done.counted, done.conflict) == (False, False)
        assert await store.load("u") is None and await store.grants("u", 200.0) == []
        done = await store.spend(fresh(), "requests", 0, 12, Spend(limit=5, ceiling=5, credits=True,
                                                                   grants=(tier,)), "k", 200.0)
        assert (done.counted, done.credits_used, done.used) == (True, 7, 5)      # the key was not kept either

    async def test_a_conflicting_count_keeps_no_key(self, store):
        await store.count(fresh(), "requests", 0, 1, 10, None, 100.0)
        assert (await store.count(StoredSubject(fresh().state, 7), "requests", 0, 2, 10, "k", 100.0)).conflict
        again = await store.count(await store.load("u"), "requests", 0, 2, 10, "k", 100.0)
        assert (again.counted, again.duplicate, again.used) == (True, False, 3)

    async def test_idempotency_key(self, store):
        first = await store.count(fresh(), "requests", 0, 2, 10, "k1", 100.0)
        current = await store.load("u")
        again = await store.count(current, "requests", 0, 2, 10, "k1", 100.0)
        assert (again.duplicate, again.used) == (True, first.used)
        with pytest.raises(IdempotencyConflict):
            await store.count(current, "requests", 0, 3, 10, "k1", 100.0)

    async def test_a_key_reused_for_another_subject_is_a_conflict(self, store):
        await store.count(fresh("a"), "requests", 0, 2, 10, "shared", 100.0)
        await store.commit(Change(fresh("b"), 0))
        with pytest.raises(IdempotencyConflict, match="subject 'a'"):
            await store.count(await store.load("b"), "requests", 0, 2, 10, "shared", 100.0)
        assert await store.used("b", [("requests", 0)]) == {("requests", 0): 0}

    async def test_windows_are_separate_rows(self, store):
        await store.count(fresh(), "requests", 0, 2, 10, None, 100.0)
        current = await store.load("u")
        await store.count(current, "requests", 86400, 5, 10, None, 100.0)
        assert await store.used("u", [("requests", 0), ("requests", 86400), ("requests", 7)]) == {
            ("requests", 0): 2, ("requests", 86400): 5, ("requests", 7): 0}


class TestSaving:
    async def test_state_and_audit_in_one_transaction(self, store):
        new = StoredSubject(fresh().state.with_(status="paid"), 0, "cus_1", "sub_1")
        audit = AuditEntry("u", "limited_free_trial", "paid", "admin:override", "test", 100.0, "v1")
        assert await store.commit(Change(new, 0, (audit,)))
        loaded = await store.load("u")
        assert (loaded.state.status, loaded.version, loaded.stripe_customer) == ("paid", 1, "cus_1")
        assert [a.to_status for a in await store.transitions("u")] == ["paid"]

    async def test_concurrent_writers_never_overwrite_each_other(self, store):
        await store.commit(Change(fresh(), 0))
        base = await store.load("u")

        async def write(status: str) -> bool:
            new = StoredSubject(base.state.with_(status=status), base.version)
            return await store.commit(Change(new, base.version, (AuditEntry("u", "x", status, "t", "r", 1.0, "v1"),)))

        results = await asyncio.gather(*(write(s) for s in ("paid", "grace_period", "canceled")))
        assert sum(results) == 1
        assert len(await store.transitions("u")) == 1
        assert (await store.load("u")).version == 2

    async def test_updates_keep_the_stripe_ids_and_the_timer_findable_whether_they_change_or_not(self, store):
        """SQLite rewrites only the indexed columns whose value changes: the indexes must follow either way."""
        first = StoredSubject(fresh().state.with_(status="paid_trial", timer_due=500.0), 0, "cus_a", "sub_a")
        assert await store.commit(Change(first, 0))
        steps = [  # (timer, customer, subscription) of each next row
            (500.0, "cus_a", "sub_a"),      # nothing indexed changes
            (500.0, "cus_b", "sub_a"),      # one id changes
            (None, "cus_b", "sub_b"),       # the timer goes, the other id changes
            (700.0, None, "sub_b"),         # a timer again, an id cleared
        ]
        for version, (timer, customer, subscription) in enumerate(steps, start=1):
            row = StoredSubject(first.state.with_(timer_due=timer, tier=f"t{version}"), version, customer, subscription)
            assert await store.commit(Change(row, version))
            loaded = await store.load("u")
            assert (loaded.version, loaded.state.tier, loaded.state.timer_due, loaded.stripe_customer,
                    loaded.stripe_subscription) == (version + 1, f"t{version}", timer, customer, subscription)
            assert await store.find_subject(customer, None) == ("u" if customer else None)
            assert await store.find_subject(None, subscription) == "u"
            for gone in {"cus_a", "cus_b"} - {customer}:
                assert await store.find_subject(gone, None) is None
            assert [s.state.subject for s in await store.due(1000.0, 10)] == (["u"] if timer else [])
        assert not await store.commit(Change(first, 3))      # a version already gone changes nothing

    async def test_a_failing_audit_rolls_back_the_state(self, store):
        await store.commit(Change(fresh(), 0))
        base = await store.load("u")
        bad_audit = AuditEntry("u", "a", None, "t", "r", 1.0, "v1")   # to_status NOT NULL
        with pytest.raises(StoreError):
            await store.commit(Change(StoredSubject(base.state.with_(status="paid"), 1), 1, (bad_audit,)))
        loaded = await store.load("u")
        assert (loaded.state.status, loaded.version) == ("limited_free_trial", 1)


class TestRows:
    """Every field of a stored subject goes into its row and comes back: the columns are derived from the
    declarations, so a field added to SubjectState or StoredSubject is covered here as soon as its migration
    adds the column."""

    @staticmethod
    def every_field_set(subject: str, version: int) -> StoredSubject:
        def distinct(cls, skip=()):
            return {f.name: (f"{f.name}-{i}" if "str" in str(f.type) else float(1000 + i))
                    for i, f in enumerate(dataclasses.fields(cls)) if f.name not in skip}

        # A value of its own in every field; those that hold structures, built of distinct values too.
        pairs = {"addons": (("addon-a", 2), ("addon-b", 3)), "quantity": 7}
        structured = {"subscriptions": (Subscription(**{**distinct(Subscription), **pairs}),
                                        Subscription(**{**distinct(Subscription), **pairs, "id": "sub_other"})),
                      **pairs, "traits": (("members", 40), ("seats", 5))}
        state = SubjectState(**{**distinct(SubjectState), **structured, "subject": subject})
        fold = state.with_(status="fold-status")
        return StoredSubject(**{**distinct(StoredSubject, skip=("state", "version", "fold_state")),
                                "state": state, "version": version, "fold_state": fold})

    async def test_every_field_is_stored_and_loaded(self, store):
        first = self.every_field_set("u", 0)
        assert await store.commit(Change(first, 0))
        assert await store.load("u") == dataclasses.replace(first, version=1)
        second = self.every_field_set("u", 1)
        second = dataclasses.replace(second, state=second.state.with_(status="moved", tier="other"),
                                     stripe_customer="cus_moved")
        assert await store.commit(Change(second, 1))
        assert await store.load("u") == dataclasses.replace(second, version=2)
        assert [s.state.subject for s in await store.due(1e9, 10)] == ["u"]
        assert (await store.due(1e9, 10))[0] == dataclasses.replace(second, version=2)

    async def test_many_subjects_and_their_usage_are_read_as_one_by_one(self, store):
        """load_many (the cache's reading ahead) answers what load and used answer, in the order asked, a
        subject not stored as None, a window never counted as 0."""
        first = self.every_field_set("u", 0)
        assert await store.commit(Change(first, 0))
        assert await store.commit(Change(fresh("v", "paid"), 0))
        await store.count(await store.load("u"), "requests", 7, 3, None, "k1", 100.0)
        await store.count(await store.load("v"), "requests", 7, 5, None, "k2", 100.0)
        await store.count(await store.load("v"), "requests", 8, 2, None, "k3", 100.0)
        wanted = [("v", "requests", 7), ("u", "requests", 7), ("v", "requests", 8), ("v", "requests", 9),
                  ("nobody", "requests", 7)]
        rows, usage = await store.load_many(["v", "nobody", "u"], wanted)
        assert rows == [await store.load("v"), None, await store.load("u")]
        assert rows[2] == dataclasses.replace(first, version=1)
        assert usage == {("v", "requests", 7): 5, ("u", "requests", 7): 3, ("v", "requests", 8): 2,
                         ("v", "requests", 9): 0, ("nobody", "requests", 7): 0}
        assert await store.load_many(["u"], []) == ([rows[2]], {})

    async def test_a_batch_writes_every_field_of_the_state(self, store):
        assert await store.commit(Change(fresh(), 0))
        moved = self.every_field_set("u", 1)
        assert await store.commit_batch([Change(dataclasses.replace(moved, stripe_customer=None), 1)]) == {"u"}
        loaded = await store.load("u")
        assert loaded.state == moved.state and loaded.stripe_customer is None     # the ids stay as stored

    def test_with_state_keeps_every_other_field(self):
        row = self.every_field_set("u", 7)
        new_state = row.state.with_(status="elsewhere")
        assert row.with_state(new_state) == dataclasses.replace(row, state=new_state)


class TestLookup:
    async def test_what_a_webhook_event_needs_first(self, store):
        """(stored already, its subject, the subject's row): named, found by a Stripe id, unknown, seen."""
        linked = StoredSubject(fresh("alice").state, 0, stripe_customer="cus_a", stripe_subscription="sub_a")
        event = EventRecord("evt_seen", "checkout.session.completed", 1.0, "{}", "applied", "", "alice")
        assert await store.commit(Change(linked, 0, new_events=(event,)))
        seen, subject, row = await store.lookup("evt_new", "alice", None, None)
        assert (seen, subject, row.state.subject, row.version) == (False, "alice", "alice", 1)
        for customer, subscription in (("cus_a", None), (None, "sub_a"), ("cus_other", "sub_a")):
            seen, subject, row = await store.lookup("evt_new", None, customer, subscription)
            assert (seen, subject, row.stripe_subscription) == (False, "alice", "sub_a")
        assert await store.lookup("evt_new", None, "cus_nobody", "sub_nobody") == (False, None, None)
        assert await store.lookup("evt_new", "bob", None, None) == (False, "bob", None)
        assert await store.lookup("evt_seen", None, "cus_a", None) == (True, None, None)

    async def test_a_customer_two_subjects_hold_finds_neither(self, store):
        """One customer paying for two workspaces: its id alone says whose nothing is; a subscription or a
        payment linked to one of them still does."""
        a = StoredSubject(fresh("ws_a").state, 0, stripe_customer="cus_x", stripe_subscription="sub_a")
        assert await store.commit(Change(a, 0, links=("sub_a", "pi_a")))
        assert await store.find_subject("cus_x", None) == "ws_a"
        assert not await store.customer_shared("cus_x")
        b = StoredSubject(fresh("ws_b").state, 0, stripe_customer="cus_x", stripe_subscription="sub_b")
        assert await store.commit(Change(b, 0, links=("sub_b", "pi_b")))
        assert await store.customer_shared("cus_x") and not await store.customer_shared("cus_nobody")
        assert await store.find_subject("cus_x", None) is None
        assert await store.lookup("evt_new", None, "cus_x", None) == (False, None, None)
        assert await store.find_subject("cus_x", "sub_b") == "ws_b"
        assert await store.find_subject("cus_x", None, ("ch_unknown", "pi_b")) == "ws_b"
        seen, subject, row = await store.lookup("evt_new", None, "cus_x", None, ("pi_a",))
        assert (seen, subject, row.stripe_subscription) == (False, "ws_a", "sub_a")

    async def test_pending_events_by_customer_or_subscription_once_each_in_created_order(self, store):
        def waiting(id_, created, customer, subscription, outcome="pending"):
            return EventRecord(id_, "invoice.paid", created, "{}", outcome, "", None, customer, subscription)

        for e in (waiting("e_both", 30.0, "cus_a", "sub_a"), waiting("e_cus", 10.0, "cus_a", None),
                  waiting("e_sub", 20.0, None, "sub_a"), waiting("e_sub_other_cus", 20.0, "cus_b", "sub_a"),
                  waiting("e_other", 5.0, "cus_b", "sub_b"), waiting("e_done", 1.0, "cus_a", "sub_a", "applied")):
            assert await store.record_event(e)
        ids = lambda rows: [r.id for r in rows]     # noqa: E731
        assert ids(await store.pending("cus_a", "sub_a")) == ["e_cus", "e_sub", "e_sub_other_cus", "e_both"]
        assert ids(await store.pending("cus_a", None)) == ["e_cus", "e_both"]
        assert ids(await store.pending(None, "sub_a")) == ["e_sub", "e_sub_other_cus", "e_both"]
        assert ids(await store.pending("cus_b", "sub_nobody")) == ["e_other", "e_sub_other_cus"]
        assert await store.pending("cus_nobody", None) == []


class TestBatches:
    async def test_commit_batch_writes_the_current_and_skips_the_stale(self, store):
        for name in ("a", "b", "c"):
            await store.commit(Change(fresh(name), 0))
        await store.commit(Change(StoredSubject(fresh("b").state.with_(tier="pro"), 1), 1))   # b moved on
        changes = [Change(StoredSubject(fresh(n).state.with_(status="paid"), 1), 1,
                          (AuditEntry(n, "limited_free_trial", "paid", "timer", "r", 1.0, "v1"),))
                   for n in ("a", "b", "c")]
        assert await store.commit_batch(changes) == {"a", "c"}
        assert [(await store.load(n)).state.status for n in "abc"] == ["paid", "limited_free_trial", "paid"]
        assert [len(await store.transitions(n)) for n in "abc"] == [1, 0, 1]

    async def test_due_finds_only_due_timers_earliest_first(self, store):
        for name, due in (("late", 300.0), ("early", 150.0), ("never", None), ("later", 900.0)):
            await store.commit(Change(StoredSubject(fresh(name).state.with_(timer_due=due), 0), 0))
        assert [s.state.subject for s in await store.due(400.0, 10)] == ["early", "late"]
        assert [s.state.subject for s in await store.due(400.0, 1)] == ["early"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TestConcurrentCounting:
    async def test_concurrent_counts_never_pass_the_limit(self, store):
        await store.commit(Change(fresh(), 0))
        current = await store.load("u")
        results = await asyncio.gather(*(store.count(current, "requests", 0, 1, 25, f"k{i}", 100.0)
                                         for i in range(60)))
        assert sum(r.counted for r in results) == 25
        assert await store.used("u", [("requests", 0)]) == {("requests", 0): 25}

    async def test_concurrent_repeats_of_one_key_count_once(self, store):
        await store.commit(Change(fresh(), 0))
        current = await store.load("u")
        results = await asyncio.gather(*(store.count(current, "requests", 0, 3, None, "same", 100.0)
                                         for _ in range(20)))
        assert sum(not r.duplicate for r in results) == 1 and all(r.counted for r in results)
        assert await store.used("u", [("requests", 0)]) == {("requests", 0): 3}


class TestCountsArrivingTogether:
    """Counts that arrive together commit together (SQLite: one transaction on the loop's connection; PostgreSQL:
    one call of plangate_count_batch), each answered with its own outcome."""

    async def test_each_count_of_a_batch_gets_its_own_answer(self, store):
        for name in ("a", "b", "c"):
            await store.commit(Change(fresh(name), 0))
        a, b, c = [await store.load(n) for n in "abc"]
        await store.count(a, "requests", 0, 1, None, "taken", 100.0)
        stale_c = StoredSubject(c.state, 7)
        calls = [store.count(a, "requests", 0, 1, 10, f"k{i}", 100.0) for i in range(5)]
        calls += [store.count(b, "requests", 0, 11, 10, "too-big", 100.0),       # refused: past the limit
                  store.count(stale_c, "requests", 0, 1, 10, "stale", 100.0),    # conflict: c moved on
                  store.count(a, "requests", 0, 2, None, "taken", 100.0),        # the key, other work: 409
                  store.count(b, "requests", 0, 3, 10, "twice", 100.0),          # one key twice in the batch
                  store.count(b, "requests", 0, 3, 10, "twice", 100.0)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        counted, (too_big, stale, taken, twice, again) = results[:5], results[5:]
        assert sorted(r.used for r in counted) == [2, 3, 4, 5, 6] and all(r.counted for r in counted)
        assert (too_big.counted, too_big.used) == (False, 0)
        assert stale.conflict and not stale.counted
        assert isinstance(taken, IdempotencyConflict)
        assert sorted([twice.duplicate, again.duplicate]) == [False, True] and twice.used == again.used == 3
        if isinstance(store, PostgresStore):
            assert store._counts.sizes[-1] == 10          # all in one call
        assert await store.used("a", [("requests", 0)]) == {("requests", 0): 6}
        assert await store.used("b", [("requests", 0)]) == {("requests", 0): 3}
        # The refused and the conflicting counts kept no key: the same keys count later work as new.
        for current, key in ((b, "too-big"), (await store.load("c"), "stale")):
            done = await store.count(current, "requests", 0, 1, 10, key, 100.0)
            assert done.counted and not done.duplicate

    async def test_concurrent_counts_in_batches_admit_exactly_the_limit(self, store):
        await store.commit(Change(fresh(), 0))
        current = await store.load("u")
        results = []
        for wave in range(4):       # several batches, the limit reached inside one of them
            results += await asyncio.gather(*(store.count(current, "requests", 0, 2, 25, f"w{wave}-{i}", 100.0)
                                              for i in range(9)))
        assert sum(r.counted for r in results) == 12
        assert sorted(r.used for r in results if r.counted) == list(range(2, 25, 2))
        assert all(r.used == 24 for r in results if not r.counted)
        assert await store.used("u", [("requests", 0)]) == {("requests", 0): 24}


    async def test_state_changes_and_events_arriving_together_each_get_their_own_answer(self, store):
        """Webhook writes committed together (SQLite's group commit; PostgreSQL's batch of writes in one
        transaction): a repeat delivery or a stale version fails alone and writes nothing of its own."""
        def event(event_id: str, subject: str | None, outcome: str = "applied") -> EventRecord:
            return EventRecord(event_id, "invoice.paid", 1.0, "{}", outcome, "", subject, "cus_x" if subject is None
                               else None)

        assert await store.commit(Change(fresh("taken"), 0, new_events=(event("evt_taken", "taken"),)))
        assert await store.commit(Change(fresh("moved"), 0))
        moved = await store.load("moved")
        assert await store.commit(Change(StoredSubject(moved.state.with_(tier="pro"), 1), 1))
        calls = [store.commit(Change(fresh(f"s{i}"), 0, new_events=(event(f"evt_{i}", f"s{i}"),))) for i in range(8)]
        calls += [store.commit(Change(fresh("late"), 0, new_events=(event("evt_late", "late"),
                                                                    event("evt_taken", "late")))),
                  store.commit(Change(StoredSubject(moved.state.with_(status="paid"), 1), 1,
                                      new_events=(event("evt_stale", "moved"),))),
                  store.record_event(event("evt_waiting", None, "pending")),
                  store.record_event(event("evt_taken", None, "pending"))]
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert results[:8] == [True] * 8 and all([await store.load(f"s{i}") for i in range(8)])
        assert isinstance(results[8], DuplicateEvent) and await store.load("late") is None
        assert results[9] is False and (await store.load("moved")).state.tier == "pro"
        assert results[10:] == [True, False]
        assert [await store.event_seen(e) for e in ("evt_late", "evt_stale", "evt_waiting", "evt_3")] == \
            [False, False, True, True]
        if isinstance(store, PostgresStore):
            assert store._writes.sizes[-1] == 12              # one transaction


    async def test_a_waiting_event_another_subjects_fold_took_is_not_folded_into_a_second(self, store):
        """Two adoptions reach one waiting event through different Stripe ids (its customer, linked to one
        subject; its subscription, to another): the commit that comes second fails as a stale version would,
        writing nothing, and the fold is read again (the event is no longer waiting then)."""
        waiting = EventRecord("evt_w", "invoice.paid", 1.0, "{}", "pending", "", None, "cus_x", "sub_y")
        assert await store.record_event(waiting)

        def folded_into(subject: str) -> EventRecord:
            return dataclasses.replace(waiting, outcome="applied", subject=subject, state_before=fresh(subject).state)

        first, second = Change(fresh("x"), 0, replayed_events=(folded_into("x"),)), \
            Change(fresh("y"), 0, replayed_events=(folded_into("y"),))
        assert await asyncio.gather(store.commit(first), store.commit(second)) == [True, False]
        assert await store.load("y") is None
        assert [(e.id, e.subject, e.outcome) for e in await store.events("x")] == [("evt_w", "x", "applied")]
        assert await store.events("y") == []
        x = await store.load("x")           # its own fold of the event again (a later event refolds it): allowed
        assert await store.commit(Change(x, x.version, replayed_events=(folded_into("x"),)))


class TestPostgresBatches:
    async def test_a_count_that_fails_in_the_database_fails_alone(self, pg_store):
        """A value the database refuses (a NUL in a key: not text to PostgreSQL) fails plangate_count_batch's call:
        the batch runs again a count a call, and only the failing count's caller gets the error. (A bigint's
        overflow was the way to fail one before the usage ceiling; the next test shows that count refused.)"""
        store = pg_store
        for name in ("a", "b"):
            await store.commit(Change(fresh(name), 0))
        a, b = await store.load("a"), await store.load("b")
        results = await asyncio.gather(store.count(b, "requests", 0, 1, 10, "n1", 100.0),
                                       store.count(a, "requests", 0, 5, None, "bad\x00key", 100.0),
                                       store.count(b, "requests", 0, 1, 10, "n2", 100.0), return_exceptions=True)
        assert store._counts.sizes[-1] == 3
        assert isinstance(results[1], StoreError) and "0x00" in str(results[1])
        assert [(r.counted, r.used) for r in (results[0], results[2])] in ([(True, 1), (True, 2)],
                                                                             [(True, 2), (True, 1)])
        assert await store.used("a", [("requests", 0)]) == {("requests", 0): 0}

    async def test_a_count_past_the_usage_ceiling_is_refused_alone(self, pg_store):
        """A count that would take a window past USAGE_CEILING (2**62; twice that overflowed the bigint and failed
        the call) is refused in the batch, its caller alone getting UsageCeiling; nothing of it is written, its key
        neither, and the usage stays a bigint every later count can add to."""
        store = pg_store
        for name in ("a", "b"):
            await store.commit(Change(fresh(name), 0))
        a, b = await store.load("a"), await store.load("b")
        assert (await store.count(a, "requests", 0, USAGE_CEILING, None, "big-1", 100.0)).used == USAGE_CEILING
        results = await asyncio.gather(store.count(b, "requests", 0, 1, 10, "n1", 100.0),
                                       store.count(a, "requests", 0, 2**62, None, "big-2", 100.0),
                                       store.count(b, "requests", 0, 1, 10, "n2", 100.0), return_exceptions=True)
        assert store._counts.sizes[-1] == 3
        assert isinstance(results[1], UsageCeiling) and (results[1].used, results[1].amount) == (USAGE_CEILING, 2**62)
        assert sorted((r.counted, r.used) for r in (results[0], results[2])) == [(True, 1), (True, 2)]
        assert await store.used("a", [("requests", 0)]) == {("requests", 0): USAGE_CEILING}
        with pytest.raises(UsageCeiling):       # its key was not kept: not a repeat
            await store.count(a, "requests", 0, 1, None, "big-2", 100.0)
        refused = await store.count(a, "requests", 0, 1, 10, "limited", 100.0)     # a limit refuses first
        assert (refused.counted, refused.used) == (False, USAGE_CEILING)

    async def test_a_commit_still_waiting_for_its_batch_is_withdrawn_and_never_written(self, pg_store, pg_dsn):
        """Three batches of state changes wait on a lock another session holds; a fourth change waits for room.
        Withdrawn (the gate gave up waiting), it is never written; those already sent are, once the lock goes."""
        store = pg_store
        blocker = await asyncpg.connect(pg_dsn)
        try:
            await blocker.execute("BEGIN")
            await blocker.execute("LOCK TABLE subscriptions IN EXCLUSIVE MODE")
            sent = []
            for i in range(3):
                sent.append(store.commit(Change(fresh(f"w{i}"), 0)))
                await asyncio.sleep(0.05)       # each its own batch: three in flight, all waiting
            waiting = store.commit(Change(fresh("w3"), 0))
            await asyncio.sleep(0.05)
            assert store.withdraw(waiting) and waiting.cancelled()
            assert not store.withdraw(sent[0])      # sent: it stands
            await blocker.execute("ROLLBACK")
            assert await asyncio.wait_for(asyncio.gather(*sent), 10) == [True, True, True]
        finally:
            await blocker.close()
        assert [await store.load(f"w{i}") is not None for i in range(4)] == [True, True, True, False]

    async def test_two_nodes_batches_over_the_same_subjects_never_deadlock(self, pg_dsn):
        """Two nodes' batches over the same subjects, arriving in opposite orders, both held up in the middle by
        a row another session has locked: each batch takes its row locks in (subject, meter, window) order, so
        once the row is free one batch waits for the other instead of both waiting for each other (a deadlock
        PostgreSQL would break after deadlock_timeout, a second, by failing one batch)."""
        nodes = [open_store(pg_dsn), open_store(pg_dsn)]
        blocker = None
        try:
            for node in nodes:
                await node.open()
            await nodes[0].migrate()
            names = [f"s{i:02}" for i in range(12)]
            for name in names:
                await nodes[0].count(fresh(name), "requests", 0, 1, None, None, 100.0)
            rows = {n: await nodes[0].load(n) for n in names}
            blocker = await asyncpg.connect(pg_dsn)
            await blocker.execute("BEGIN")
            await blocker.execute("SELECT 1 FROM quota_usage WHERE subject = 's06' FOR UPDATE")
            batches = [asyncio.gather(*(node.count(rows[n], "requests", 0, 1, None, f"{tag}-{n}", 100.0)
                                        for n in order))
                       for node, order, tag in ((nodes[0], names, "a"), (nodes[1], names[::-1], "b"))]
            await asyncio.sleep(0.3)
            assert not any(b.done() for b in batches)          # both wait for s06
            await blocker.execute("ROLLBACK")
            results = await asyncio.wait_for(asyncio.gather(*batches), 20)
            assert all(r.counted for batch in results for r in batch)
            assert nodes[0]._counts.sizes[-1] == nodes[1]._counts.sizes[-1] == 12
            assert nodes[0].batches_retried == nodes[1].batches_retried == 0
            for n in names:
                assert await nodes[1].used(n, [("requests", 0)]) == {("requests", 0): 3}
        finally:
            if blocker is not None:
                await blocker.close()
            for node in nodes:
                await node.close()


class TestPostgresPool:
    async def test_callers_get_a_connection_in_the_order_they_asked(self):
        """Callers keep arriving while others wait (as checks do under load): each gets a connection in its
        turn. asyncpg's pool alone hands a freed connection to whoever asks first, and a woken waiter that
        finds it gone waits again at the back: under load some checks waited past their time budget and
        were answered by the fail mode. With one connection, the order of answers is the order of turns."""
        dsn = await postgres.create_database()
        store = open_store(dsn, pool_max=1)
        asked, answered = [], []
        try:
            await store.open()
            await store.migrate()

            async def call(n: int):
                asked.append(n)
                await store.load("u")
                answered.append(n)

            calls = []
            for n in range(200):        # a new caller every turn of the loop, as requests keep coming
                calls.append(asyncio.ensure_future(call(n)))
                await asyncio.sleep(0)
            await asyncio.wait_for(asyncio.gather(*calls), 60)
        finally:
            await store.close()
            await postgres.drop_database(dsn)
        passed_over = [n for i, n in enumerate(answered) if n != asked[i]]
        assert not passed_over, f"{len(passed_over)} of {len(answered)} answered out of turn"


class TestJobLocks:
    async def test_a_job_lock_is_held_by_one_node_and_ends_with_its_block(self):
        """The pool resets nothing on release (one round trip less a store call): a job's lock must still end
        with its block, or the connection it was taken on would keep it for whichever call comes next."""
        dsn = await postgres.create_database()
        first, second = open_store(dsn, pool_max=1), open_store(dsn)
        try:
            await first.open()
            await first.migrate()
            await second.open()
            async with first.exclusive("sweep") as mine:
                async with second.exclusive("sweep") as theirs:
                    assert (mine, theirs) == (True, False)
                async with second.exclusive("reconcile") as other_job:
                    assert other_job
            await first.load("u")           # the one pooled connection, used again
            async with second.exclusive("sweep") as theirs_now:
                assert theirs_now
        finally:
            await first.close()
            await second.close()
            await postgres.drop_database(dsn)


SUBSCRIPTIONS = (Subscription("sub_A", "canceled", 1.0, "pro", 1.0, 2.0, None, None, 3.0),
                 Subscription("sub_B", None, None, None))


class TestStateJson:
    @pytest.mark.parametrize("state", [
        SubjectState("u", "paid", "pro", 1700000000.25, None, 1, 2.5, "v1", 1e16),
        SubjectState("süße", "paid_trial", None, 0.1, 5e-324, -1, 1e300, "v", -0.0),   # non-ASCII: the stdlib writes it
        SubjectState("u", "paid", "pro", 1.0, subscriptions=SUBSCRIPTIONS),
        SubjectState("ü", "paid", "pro", 1.0, subscriptions=SUBSCRIPTIONS),
    ])
    def test_the_standard_librarys_text_and_back(self, state):
        assert state_json(state) == json.dumps(dataclasses.asdict(state), separators=(",", ":"))
        assert state_from_json(state_json(state)) == state

    def test_a_state_written_before_subscriptions_were_kept_has_none(self):
        text = state_json(SubjectState("u", "paid")).replace(',"subscriptions":[]', "")
        assert "subscriptions" not in text and state_from_json(text).subscriptions == ()

    async def test_pending_events_a_link_names_now_in_created_order_a_page_at_a_time(self, store):
        """What the sweep adopts late: pending events naming a subject's subscription or customer, or a linked
        subscription, charge or payment intent; not those naming nothing stored, nor events no longer pending."""
        def waiting(id_, created, customer=None, subscription=None, charge=None, intent=None, outcome="pending"):
            return EventRecord(id_, "invoice.paid", created, '{"big": "payload"}', outcome, "", None, customer,
                               subscription, stripe_payment=charge or intent, stripe_payment_intent=intent)

        assert await store.commit(Change(StoredSubject(fresh("a").state, 0, "cus_a", "sub_a"), 0,
                                         links=("sub_old", "ch_a", "pi_a")))
        for e in (waiting("e_sub", 50.0, subscription="sub_a"), waiting("e_cus", 10.0, customer="cus_a"),
                  waiting("e_old_sub", 30.0, "cus_new", "sub_old"), waiting("e_charge", 20.0, charge="ch_a"),
                  waiting("e_intent", 20.0, charge="ch_unseen", intent="pi_a"),
                  waiting("e_nobody", 15.0, "cus_nobody", "sub_nobody", "ch_nobody", "pi_nobody"),
                  waiting("e_done", 1.0, "cus_a", "sub_a", outcome="applied")):
            assert await store.record_event(e)
        found = await store.pending_linked(None, 10)
        assert [r.id for r in found] == ["e_cus", "e_charge", "e_intent", "e_old_sub", "e_sub"]
        assert {r.payload for r in found} == {""}       # left out: the adoption reads them again
        first = await store.pending_linked(None, 2)
        assert [r.id for r in first] == ["e_cus", "e_charge"]
        after = (first[-1].created, first[-1].id)
        assert [r.id for r in await store.pending_linked(after, 2)] == ["e_intent", "e_old_sub"]
        assert [r.id for r in await store.pending_linked((50.0, "e_sub"), 2)] == []


class TestSubscriptionsAndLinks:
    async def test_a_subjects_subscriptions_are_stored_and_read_back(self, store):
        row = StoredSubject(fresh().state.with_(status="paid", subscriptions=SUBSCRIPTIONS), 0, "cus_1", "sub_B")
        assert await store.commit(Change(row, 0))
        loaded = await store.load("u")
        assert loaded.state.subscriptions == SUBSCRIPTIONS and loaded.state.follows.id == "sub_B"   # live

    async def test_linked_ids_find_their_subject_and_the_first_link_stays(self, store):
        assert await store.commit(Change(fresh("a"), 0, links=("sub_old", "ch_1", "pi_1")))
        assert await store.commit(Change(StoredSubject(fresh("b").state, 0, "cus_b", "sub_b"), 0, links=("ch_1",)))
        assert await store.find_subject(None, "sub_old") == "a"
        assert await store.find_subject(None, None, ("ch_unknown", "pi_1")) == "a"
        assert await store.find_subject(None, None, ("ch_1",)) == "a"
        assert await store.find_subject("cus_b", "sub_old") == "a"      # a subscription before a customer
        assert await store.find_subject(None, None, ("ch_2",)) is None
        assert (await store.lookup("evt_x", None, None, None, ("pi_1",)))[1] == "a"

    async def test_events_waiting_for_a_payment_are_found_by_it(self, store):
        waiting = EventRecord("evt_d", "charge.dispute.created", 5.0, "{}", "pending", stripe_payment="ch_9")
        other = EventRecord("evt_e", "charge.refunded", 4.0, "{}", "pending", stripe_customer="cus_9",
                            stripe_payment="ch_8")
        assert await store.record_event(waiting) and await store.record_event(other)
        assert [r.id for r in await store.pending(None, None, ("ch_9",))] == ["evt_d"]
        assert [r.id for r in await store.pending("cus_9", None, ("ch_9", "ch_8"))] == ["evt_e", "evt_d"]
        assert [r.stripe_payment for r in await store.pending("cus_9", None)] == ["ch_8"]

    async def test_events_waiting_for_a_charge_are_found_by_the_payment_intent_beside_it(self, store):
        dispute = EventRecord("evt_d", "charge.dispute.created", 5.0, "{}", "pending", stripe_payment="ch_9",
                              stripe_payment_intent="pi_9")
        lone = EventRecord("evt_p", "charge.dispute.created", 6.0, "{}", "pending", stripe_payment="pi_7",
                           stripe_payment_intent="pi_7")
        assert await store.record_event(dispute) and await store.record_event(lone)
        assert [r.id for r in await store.pending(None, None, ("pi_9",))] == ["evt_d"]
        assert [r.id for r in await store.pending(None, None, ("ch_9", "pi_9", "pi_7"))] == ["evt_d", "evt_p"]
        assert [(r.stripe_payment, r.stripe_payment_intent) for r in await store.pending(None, None, ("pi_7",))] == \
            [("pi_7", "pi_7")]

    async def test_an_erasure_finds_an_event_waiting_for_a_payment_intent_of_the_subject(self, store):
        """A dispute still pending though the payment intent beside its charge is linked to the subject (the
        gate stopped between the link's commit and the adoption): the subject's, for its erasure."""
        assert await store.commit(Change(fresh("a"), 0, links=("pi_9",)))
        dispute = EventRecord("evt_d", "charge.dispute.created", 5.0, "{}", "pending", stripe_payment="ch_9",
                              stripe_payment_intent="pi_9")
        assert await store.record_event(dispute)
        events, _, _, _ = await store.personal_rows("a", None, None)
        assert [e.id for e in events] == ["evt_d"]
