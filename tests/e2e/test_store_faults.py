"""The store fails under a running gate: the SQLite file made read-only, the disk full, PostgreSQL stopped.

Each time the gate follows its fail mode (check and consume answer 200, fail_open or fail_closed as the plan says
for the subject's status; /v1/usage answers 503 store_unavailable; a webhook answers 500 so that Stripe delivers
again, and nothing of it is stored), says so in /readyz (503) and /metrics (store errors, fail-mode answers,
webhook store errors), never answers 500 on /v1/, and recovers by itself once the fault is gone: no restart,
/readyz 200, counts counted, the retried usage report and the redelivered event taken once.

How the faults are made, for real:
- Read-only: the database file, its -wal and its folder get the immutable attribute (chattr +i; the gate runs as
  root here, so chmod alone would stop nothing, and Linux checks permissions at open, not on every write of a
  descriptor already open). They are also chmod'ed read-only, -shm included. The -shm file itself is not made
  immutable: SQLite maps it into memory, and a write to an immutable mapped page is answered by the kernel with
  SIGBUS, which kills any process outright (no store error to handle, for SQLite or anyone).
- Disk full: a 3 MiB tmpfs mounted in the test's folder holds the database; a filler file takes every byte left.
- PostgreSQL stopped: a throwaway cluster of the test's own, `pg_ctl stop` then `start`.

/readyz only reads, and a read-only or full SQLite file still reads: readiness also reports a write that failed in
the last WRITE_FAILURE_MEMORY seconds (unless a write has worked since), which is what these tests hold it to.
"""
from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
import stat
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

import plangate.server.gate
from tests.server import stripe_events as se

from ._local import deliver, metrics, sample

FAST = {"PLANGATE_STORE_TIMEOUT": "0.5", "PLANGATE_CACHE_TTL": "60"}


# --- the faults ------------------------------------------------------------------------------------------

def _chattr(flag: str, paths: list[Path]) -> subprocess.CompletedProcess:
    return subprocess.run(["chattr", flag, *map(str, paths)], capture_output=True, text=True)


@contextmanager
def read_only(database: str):
    db = Path(database)
    folder = db.parent
    immutable = [p for p in (db, Path(f"{db}-wal")) if p.exists()] + [folder]
    chmodded = [p for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm"), folder) if p.exists()]
    modes = {p: stat.S_IMODE(p.stat().st_mode) for p in chmodded}
    for p in chmodded:
        p.chmod(0o555 if p.is_dir() else 0o444)
    done = _chattr("+i", immutable)
    try:
        if done.returncode != 0:
            pytest.skip(f"cannot make the database immutable here (chattr: {done.stderr.strip()})")
        yield
    finally:
        _chattr("-i", immutable)
        for p, mode in modes.items():
            p.chmod(mode)


@pytest.fixture
def tiny_disk(tmp_path):
    """A 3 MiB tmpfs mounted in the test's folder; unmounted at the end."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m,mode=0755", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (mount: {done.stderr.strip()})")
    yield mount
    if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@contextmanager
def disk_full(folder: Path):
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for chunk in (1 << 20, 1 << 16, 1 << 12, 1):
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
        os.fsync(fd)
    finally:
        os.close(fd)
    assert os.statvfs(folder).f_bavail == 0
    try:
        yield
    finally:
        filler.unlink()


# --- what the gate must do ------------------------------------------------------------------------------

SUB = "cus_fault", "sub_fault"


async def prepare(gate) -> None:
    """Before the fault: a subject that fails open (limited_free_trial) and one that fails closed
    (billing_problem), both in the gate's cache, and something counted."""
    status, body = await gate.consume("open-user", 1, key="before-1")
    assert (status, body["counted"]) == (200, True)
    status, _ = await gate.post("/v1/subjects/closed-user/transition", {"to": "billing_problem", "reason": "t"})
    assert status == 200
    status, body = await gate.check("closed-user")
    assert (status, body["status"]) == (200, "billing_problem")


async def during(gate, *, reads_work: bool, status_known: bool = True) -> dict:
    """Everything a client, Stripe and a probe see while the store fails; the answers by name."""
    seen = {}
    seen["consume_open"] = await gate.consume("open-user", 1, key="during-1")
    seen["consume_closed"] = await gate.consume("closed-user", 1, key="during-2")
    seen["check_open"] = await gate.check("open-user")
    seen["check_new"] = await gate.check("someone-new")
    seen["usage"] = await gate.post("/v1/usage", {"subject": "open-user", "meter": "requests", "amount": 3,
                                                  "idempotency_key": "ran-1"})
    seen["transition"] = await gate.post("/v1/subjects/open-user/transition", {"to": "paid", "reason": "t"})
    seen["view"] = await gate.get("/v1/subjects/open-user")
    evt = se.event("checkout.session.completed", se.checkout("hooked-user", *SUB), time.time(), "evt_fault_1")
    seen["webhook"] = await deliver(gate.session, gate.url, evt)
    seen["ready"] = await gate.get("/readyz", token=None)

    for name, (status, body) in seen.items():
        assert status != 500 or name == "webhook", (name, status, body)
    for name in ("consume_open", "consume_closed", "check_open", "check_new"):
        assert seen[name][0] == 200, (name, seen[name])
    assert (seen["consume_open"][1]["reason"], seen["consume_open"][1]["allowed"],
            seen["consume_open"][1]["counted"]) == ("fail_open", True, False)
    if reads_work or status_known:
        assert (seen["consume_closed"][1]["reason"], seen["consume_closed"][1]["allowed"],
                seen["consume_closed"][1]["counted"], seen["consume_closed"][1]["status"]) == \
            ("fail_closed", False, False, "billing_problem")
    else:
        # PostgreSQL: losing the LISTEN connection drops every cached subject (another node's change could be
        # missed). The gate no longer knows the status, so the meter's fail mode decides (open), as the plan says.
        assert (seen["consume_closed"][1]["reason"], seen["consume_closed"][1]["status"]) == ("fail_open", None)
    # A check reads; where reads still work it answers from the store, else by the fail mode.
    assert seen["check_open"][1]["reason"] == ("ok" if reads_work else "fail_open")
    assert seen["check_new"][1]["reason"] == ("ok" if reads_work else "fail_open")
    assert (seen["usage"][0], seen["usage"][1]["error"]) == (503, "store_unavailable")
    assert (seen["transition"][0], seen["transition"][1]["error"]) == (503, "store_unavailable")
    assert seen["view"][0] == (200 if reads_work else 503)
    assert (seen["webhook"][0], seen["webhook"][1]["error"]) == (500, "store_unavailable")
    status, ready = seen["ready"]
    assert status == 503 and ready["ready"] is False and ready["checks"]["store"]["ok"] is False, ready
    assert ready["checks"]["store"]["error"]

    found = await metrics(gate)
    errors = {labels[0][1]: v for (name, labels), v in found.items() if name == "plangate_store_errors_total"}
    assert sum(errors.values()) >= 3, errors
    if reads_work:
        assert errors.get("count", 0) >= 2, errors      # the two consumes' writes
    assert sample(found, "plangate_fail_mode_answers_total", mode="open") >= 1
    assert sample(found, "plangate_fail_mode_answers_total", mode="closed") >= (1 if reads_work or status_known else 0)
    assert sample(found, "plangate_webhooks_total", outcome="store_error") == 1
    return seen


async def after(gate, *, first_write_then_ready: bool = True) -> None:
    """The fault is gone: the same gate, not restarted, works again on its own."""
    async def consume_counts():
        status, body = await gate.consume("open-user", 1, key="after-1")
        return status == 200 and body["counted"] and body["reason"] == "ok"

    deadline = time.monotonic() + 15
    while not await consume_counts():                 # PostgreSQL's pool may need a moment to reconnect
        assert time.monotonic() < deadline, await gate.consume("open-user", 1, key="after-1")
        await asyncio.sleep(0.2)
    status, ready = await gate.get("/readyz", token=None)
    assert status == 200 and ready["ready"] is True, ready
    usage = {"subject": "open-user", "meter": "requests", "amount": 3, "idempotency_key": "ran-1"}
    for _ in range(2):                                  # the client's retry with the same key counts once
        status, body = await gate.post("/v1/usage", usage)
        assert (status, body["counted"]) == (200, True), body
    evt = se.event("checkout.session.completed", se.checkout("hooked-user", *SUB), time.time(), "evt_fault_1")
    status, body = await deliver(gate.session, gate.url, evt)     # Stripe's redelivery
    assert (status, body["outcome"]) == (200, "applied"), body
    status, view = await gate.get("/v1/subjects/open-user")
    assert status == 200
    # before-1 and after-1 counted once each, the usage report's 3 once; nothing from during the fault.
    assert view["usage"][0]["used"] == 1 + 1 + 3, view["usage"]
    status, view = await gate.get("/v1/subjects/hooked-user")
    assert view["status"] == "paid_trial" and view["stripe_subscription"] == SUB[1]
    status, body = await gate.post("/v1/subjects/open-user/transition", {"to": "paid", "reason": "after"})
    assert (status, body["moved"]) == (200, True)


def events(database: str) -> list[str]:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        return [r[0] for r in db.execute("SELECT event_id FROM subscription_events")]


# --- SQLite ---------------------------------------------------------------------------------------------

class TestSQLiteReadOnly:
    async def test_fail_mode_readiness_metrics_and_recovery(self, local_gate, tmp_path):
        database = str(tmp_path / "store" / "gate.sqlite3")
        gate = await local_gate(database, **FAST)
        await prepare(gate)
        with read_only(database):
            await during(gate, reads_work=True)
            assert events(database) == []                 # the refused event left nothing behind
        await after(gate)

    async def test_readiness_recovers_without_any_write(self, local_gate, tmp_path, monkeypatch):
        """Nobody writes after the fault (a load balancer sends no traffic to an unready node): readiness
        still comes back once the failed write is old enough."""
        monkeypatch.setattr(plangate.server.gate, "WRITE_FAILURE_MEMORY", 0.5)
        database = str(tmp_path / "store" / "gate.sqlite3")
        gate = await local_gate(database, **FAST)
        with read_only(database):
            assert (await gate.consume("u", 1))[1]["reason"] == "fail_open"
            assert (await gate.get("/readyz", token=None))[0] == 503
        await asyncio.sleep(0.6)
        assert (await gate.get("/readyz", token=None))[0] == 200


class TestSQLiteDiskFull:
    async def test_fail_mode_readiness_metrics_and_recovery(self, tiny_disk, local_gate):
        database = str(tiny_disk / "gate.sqlite3")
        gate = await local_gate(database, **FAST)
        await prepare(gate)
        with disk_full(tiny_disk):
            await during(gate, reads_work=True)
            assert events(database) == []
        await after(gate)


# --- PostgreSQL -----------------------------------------------------------------------------------------

class TestPostgresStopped:
    async def test_fail_mode_readiness_metrics_and_recovery(self, pg_cluster, local_gate):
        gate = await local_gate(pg_cluster.dsn, PLANGATE_PG_CONNECT_TIMEOUT="1", PLANGATE_PG_COMMAND_TIMEOUT="2",
                                **FAST)
        await prepare(gate)
        pg_cluster.stop()
        try:
            await during(gate, reads_work=False, status_known=False)
        finally:
            pg_cluster.start()
        await after(gate)
