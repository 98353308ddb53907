"""Concurrent clients never get more than the quota, and the store holds exactly what was admitted."""
from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from .conftest import PLAN


def plan_with_daily_limit(tmp_path: Path, limit: int) -> Path:
    text = PLAN.read_text().replace("requests: {limit: 20, per: day}", f"requests: {{limit: {limit}, per: day}}")
    assert f"limit: {limit}, per: day" in text
    path = tmp_path / "plans.yaml"
    path.write_text(text)
    return path


def stored_used(database: str, subject: str) -> int:
    with sqlite3.connect(database) as db:
        row = db.execute("SELECT SUM(used) FROM quota_usage WHERE subject = ?", (subject,)).fetchone()
    return row[0] or 0


class TestConcurrentConsume:
    @pytest.mark.parametrize("clients, each, limit", [(10, 5, 20), (8, 6, 48), (6, 4, 100), (16, 3, 1)])
    async def test_admits_exactly_min_of_limit_and_demand(self, start_gate, tmp_path, clients, each, limit):
        gate = await start_gate(plan_with_daily_limit(tmp_path, limit))

        async def client(n: int) -> int:
            admitted = 0
            for i in range(each):
                status, body = await gate.consume("shared", 1, key=f"c{n}-{i}")
                assert status == 200
                admitted += body["counted"]
            return admitted

        admitted = sum(await asyncio.gather(*(client(n) for n in range(clients))))
        assert admitted == min(limit, clients * each)
        assert stored_used(gate.database, "shared") == admitted

    async def test_amounts_larger_than_one_never_overshoot(self, start_gate, tmp_path):
        gate = await start_gate(plan_with_daily_limit(tmp_path, 50))
        answers = await asyncio.gather(*(gate.consume("s", 7, key=f"k{i}") for i in range(20)))
        admitted = sum(7 for _, b in answers if b["counted"])
        assert admitted == 49 and stored_used(gate.database, "s") == 49
        assert all(b["used"] <= 50 for _, b in answers)


class TestConcurrentIdempotency:
    async def test_concurrent_repeats_of_one_key_count_once(self, start_gate, tmp_path):
        gate = await start_gate(plan_with_daily_limit(tmp_path, 1000))
        answers = await asyncio.gather(*(gate.consume("s", 5, key="same-job") for _ in range(30)))
        assert all(status == 200 and b["counted"] for status, b in answers)
        assert sum(not b["duplicate"] for _, b in answers) == 1
        assert stored_used(gate.database, "s") == 5

    async def test_concurrent_usage_reports_with_repeats(self, gate):
        bodies = [{"subject": "s", "meter": "requests", "amount": 2, "idempotency_key": f"job-{i % 10}"}
                  for i in range(40)]
        answers = await asyncio.gather(*(gate.post("/v1/usage", b) for b in bodies))
        assert all(status == 200 for status, _ in answers)
        assert stored_used(gate.database, "s") == 20
