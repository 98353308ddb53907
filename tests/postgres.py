"""A real PostgreSQL for the tests: a fresh database per test on the server named by PLANGATE_TEST_POSTGRES
(default: the local server on 127.0.0.1:5432), and throwaway clusters for tests that stop the server.

Without a reachable server these tests are skipped with the reason; in CI (CI=true) that is a failure.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

ADMIN_DSN = os.environ.get("PLANGATE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def _unavailable(reason: str):
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"PostgreSQL tests cannot run in CI: {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL tests skipped: {reason}. Start PostgreSQL on 127.0.0.1:5432 (.ci/run does) "
                "or set PLANGATE_TEST_POSTGRES to an admin DSN")


async def _admin(sql: str, dsn: str = ADMIN_DSN) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def with_database(dsn: str, name: str) -> str:
    base, _, _ = dsn.rpartition("/")
    return f"{base}/{name}"


async def create_database() -> str:
    """A new empty database on the test server; its DSN."""
    name = f"plangate_test_{uuid.uuid4().hex[:12]}"
    try:
        await _admin(f'CREATE DATABASE "{name}"')
    except Exception as exc:  # noqa: BLE001 - any failure to reach the server means the same here
        _unavailable(f"cannot reach {ADMIN_DSN.split('@')[-1]} ({type(exc).__name__}: {exc})")
    return with_database(ADMIN_DSN, name)


async def drop_database(dsn: str) -> None:
    name = dsn.rsplit("/", 1)[-1]
    try:
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except Exception:  # noqa: BLE001 - the server may be gone already; nothing to clean then
        pass


def _pg_bin() -> Path | None:
    for root in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (root / "initdb").exists():
            return root
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A throwaway PostgreSQL cluster on 127.0.0.1 and a free port, in a temporary folder; can be stopped
    and started again (to test what a restart does to the gate)."""

    def __init__(self, replica_of: Cluster | None = None):
        """A new cluster (initdb), or with `replica_of` a streaming replica of that running cluster: a copy
        taken with pg_basebackup, set to follow it (-R writes standby.signal and primary_conninfo)."""
        bin_dir = _pg_bin()
        if bin_dir is None:
            _unavailable("no initdb found (install PostgreSQL's server package)")
        self.bin = bin_dir
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="plangate-pg-"))
        self.data = self.dir / "data"
        self._as_user = os.geteuid() == 0       # initdb refuses to run as root: use the postgres account
        if self._as_user:
            shutil.chown(self.dir, "postgres", "postgres")
        if replica_of is None:
            self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        else:
            self._run("pg_basebackup", "-h", "127.0.0.1", "-p", str(replica_of.port), "-U", "postgres",
                      "-D", str(self.data), "-R", "-X", "stream", "--no-sync")
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(self.bin / tool), *args]
        if self._as_user:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=check)

    def start(self) -> None:
        opts = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.dir / "log"), "-w", "-t", "30", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop", check=False)

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


def wait_until(predicate, timeout: float = 10.0, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()


async def await_until(predicate, timeout: float = 10.0, step: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(step)
    return await predicate()
