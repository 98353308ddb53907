"""The SQLite file a gate serves: never a new, empty one by accident, and never two gates on one."""
from __future__ import annotations

import logging
import os
import sqlite3

import pytest

from plangate.server.store import SQLiteStore, StoreError

from .conftest import BASE_ENV
from .test_process import post, run


class TestServeNeedsAStore:
    def test_serve_refuses_to_create_a_missing_store_and_says_how(self, tmp_path):
        database = tmp_path / "gone.sqlite3"
        done = run(["serve"], {**BASE_ENV, "PLANGATE_DATABASE": str(database), "PLANGATE_PORT": "0"}, tmp_path)
        assert done.returncode == 2, done.stderr
        assert f"no store at {database}" in done.stderr and "`plangate migrate` creates it" in done.stderr
        assert "--create-store" in done.stderr and "Traceback" not in done.stderr
        assert not database.exists()

    async def test_after_migrate_serve_starts_and_create_store_starts_without(self, tmp_path, gate_process):
        env = {"PLANGATE_DATABASE": str(tmp_path / "proc.sqlite3")}
        assert run(["migrate"], env, tmp_path).returncode == 0
        first = gate_process(create_store=False)
        assert (await post(first.url, "/v1/check", {"subject": "u", "meter": "requests"}))[0] == 200
        first.stop()
        os.remove(tmp_path / "proc.sqlite3")
        second = gate_process(PLANGATE_DATABASE=str(tmp_path / "new.sqlite3"))      # --create-store
        assert (await post(second.url, "/v1/check", {"subject": "u", "meter": "requests"}))[0] == 200


class TestOneGateAFile:
    async def test_a_second_gate_on_the_file_refuses_to_start_naming_it_and_the_first(self, tmp_path, gate_process):
        first = gate_process()
        database = tmp_path / "proc.sqlite3"
        done = run(["serve"], {**BASE_ENV, "PLANGATE_DATABASE": str(database), "PLANGATE_PORT": "0"}, tmp_path)
        assert done.returncode == 1, done.stderr
        assert f"{database} is served by another gate process (pid {first.proc.pid}" in done.stderr
        assert "PostgreSQL" in done.stderr and "Traceback" not in done.stderr
        assert (await post(first.url, "/v1/consume", {"subject": "u", "meter": "requests"}))[1]["counted"] is True
        first.stop()
        second = gate_process()         # the lock went with the first process
        assert (await post(second.url, "/v1/check", {"subject": "u", "meter": "requests"}))[1]["used"] == 1

    @pytest.mark.parametrize("through", ["its path", "a symlink to it"])
    async def test_in_one_process_too_and_released_on_close(self, tmp_path, through):
        """Through a symlink too: a second gate on the same file took a lock of its own, and counted in the file
        while the first answered from its cache."""
        path = tmp_path / "s.sqlite3"
        other = path
        if through == "a symlink to it":
            other = tmp_path / "link.sqlite3"
            other.symlink_to(path)
        first, second = SQLiteStore(str(path)), SQLiteStore(str(other))
        await first.open()
        await first.claim()
        await second.open()
        with pytest.raises(StoreError, match=f"pid {os.getpid()}"):
            await second.claim()
        await first.close()
        await second.claim()
        await second.close()


def gone(how: str, path: str) -> None:
    if how == "deleted":
        for suffix in ("", "-wal", "-shm"):
            os.remove(path + suffix)
    elif how == "moved":
        os.rename(path, path + ".moved")
    else:       # replaced by another, empty store
        os.rename(path, path + ".old")
        sqlite3.connect(path).close()


class TestTheFileGoesAway:
    @pytest.mark.parametrize("how", ["deleted", "moved", "replaced"])
    async def test_not_ready_writes_refused_and_logged(self, start_gate, database, how, caplog):
        gate = await start_gate(PLANGATE_STORE_TIMEOUT="2")
        assert (await gate.consume("alice", 2, key="before"))[1]["counted"] is True
        caplog.set_level(logging.ERROR, logger="plangate")
        gone(how, database)
        status, body = await gate.consume("alice", 1, key="after")
        assert status == 200 and body["counted"] is False and body["reason"] in ("fail_open", "fail_closed")
        status, body = await gate.post("/v1/usage", {"subject": "alice", "meter": "requests", "amount": 1,
                                                     "idempotency_key": "ran"})
        assert (status, body["error"]) == (503, "store_unavailable")
        status, body = await gate.post("/v1/subjects/bob/transition", {"to": "paid", "reason": "r"})
        assert (status, body["error"]) == (503, "store_unavailable")
        status, body = await gate.get("/readyz")
        assert status == 503 and body["checks"]["store"]["ok"] is False
        errors = [r.fields.get("error", "") for r in caplog.records if r.getMessage() == "store_error"]
        assert any(f"{database} is not the file the gate opened" in e for e in errors), errors
