"""Fixtures every layer's tests may use: real PostgreSQL databases (see tests/postgres.py)."""
from __future__ import annotations

import pytest

from tests import postgres


@pytest.fixture
async def pg_dsn():
    """A fresh, empty PostgreSQL database for one test; dropped afterwards."""
    dsn = await postgres.create_database()
    yield dsn
    await postgres.drop_database(dsn)


@pytest.fixture(params=["sqlite", "postgresql"])
def each_database(request, tmp_path) -> str:
    """A store's address, the test run once on each kind: a SQLite file's path (not made yet), then a fresh,
    empty PostgreSQL database (pg_dsn)."""
    return request.getfixturevalue("pg_dsn") if request.param == "postgresql" else str(tmp_path / "gate.sqlite3")


@pytest.fixture
def pg_cluster():
    """A throwaway PostgreSQL cluster of this test's own, started; it may stop and start it."""
    cluster = postgres.Cluster()
    cluster.start()
    yield cluster
    cluster.remove()


# A gate app on 127.0.0.1 over a real store, for the server tests and the end-to-end tests alike.
from tests.server.conftest import database, start_gate  # noqa: E402,F401
