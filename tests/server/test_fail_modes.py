"""When the store fails or is too slow, answers follow the fail mode, and the gate recovers by itself."""
from __future__ import annotations

import sqlite3
from contextlib import contextmanager

from plangate.server.http.api import GATE


@contextmanager
def write_lock(database: str):
    """Another process's write transaction, as a backup tool or a migration would hold it."""
    db = sqlite3.connect(database, isolation_level=None, timeout=5)
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        db.execute("ROLLBACK")
        db.close()


def used(database: str) -> int:
    with sqlite3.connect(database) as db:
        return db.execute("SELECT COALESCE(SUM(used), 0) FROM quota_usage").fetchone()[0]


class TestWritesBlocked:
    async def test_plan_fail_mode_open_lets_work_through_and_recovers(self, start_gate):
        gate = await start_gate(PLANGATE_STORE_TIMEOUT="0.2")
        await gate.consume("u", 1)                       # the subject exists, the cache is warm
        with write_lock(gate.database):
            status, body = await gate.consume("u", 1)
            assert status == 200
            assert (body["allowed"], body["reason"], body["counted"]) == (True, "fail_open", False)
            status, ready = await gate.get("/readyz")
            assert status == 200                          # reads still work under a write lock (WAL)
        status, body = await gate.consume("u", 1)
        assert (body["allowed"], body["reason"], body["counted"]) == (True, "ok", True)
        _, metrics = await gate.get("/metrics")
        assert 'plangate_fail_mode_answers_total{mode="open"} 1.0' in metrics
        assert 'plangate_store_errors_total{operation="count"} 1.0' in metrics

    async def test_status_fail_mode_closed(self, start_gate):
        gate = await start_gate(PLANGATE_STORE_TIMEOUT="0.2")
        await gate.post("/v1/subjects/u/transition", {"to": "billing_problem", "reason": "test"})
        await gate.check("u")
        with write_lock(gate.database):
            status, body = await gate.consume("u", 1)
        assert (status, body["allowed"], body["reason"], body["counted"]) == (200, False, "fail_closed", False)
        assert body["status"] == "billing_problem"

    async def test_operator_override_closed(self, start_gate):
        gate = await start_gate(PLANGATE_STORE_TIMEOUT="0.2", PLANGATE_FAIL_MODE="closed")
        with write_lock(gate.database):
            status, body = await gate.consume("u", 1)
        assert (body["allowed"], body["reason"]) == (False, "fail_closed")
        assert used(gate.database) == 0

    async def test_usage_report_asks_for_a_retry_and_the_retry_counts_once(self, start_gate):
        gate = await start_gate(PLANGATE_STORE_TIMEOUT="0.2")
        body = {"subject": "u", "meter": "requests", "amount": 3, "idempotency_key": "ran-1"}
        with write_lock(gate.database):
            status, answer = await gate.post("/v1/usage", body)
            assert (status, answer["error"]) == (503, "store_unavailable")
        for _ in range(2):
            status, answer = await gate.post("/v1/usage", body)
            assert status == 200
        assert used(gate.database) == 3

    async def test_admin_transition_under_a_lock_changes_nothing(self, start_gate):
        gate = await start_gate(PLANGATE_STORE_TIMEOUT="0.2")
        with write_lock(gate.database):
            status, answer = await gate.post("/v1/subjects/u/transition", {"to": "closed", "reason": "t"})
            assert (status, answer["error"]) == (503, "store_unavailable")
        status, view = await gate.get("/v1/subjects/u")
        assert view["status"] == "limited_free_trial" and view["known"] is False


class TestStoreGone:
    async def test_checks_follow_the_fail_mode_and_readiness_says_so(self, gate):
        store = gate.app[GATE].store
        await store.close()                               # the database connection is lost
        status, body = await gate.check("someone-new")
        assert (status, body["allowed"], body["reason"]) == (200, True, "fail_open")
        status, ready = await gate.get("/readyz")
        assert status == 503 and ready["checks"]["store"]["ok"] is False
        status, view = await gate.get("/v1/subjects/x")
        assert (status, view["error"]) == (503, "store_unavailable")
        await store.open()
        status, body = await gate.check("someone-new")
        assert (body["allowed"], body["reason"]) == (True, "ok")
        assert (await gate.get("/readyz"))[0] == 200
