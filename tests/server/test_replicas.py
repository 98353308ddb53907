"""Reads from PostgreSQL streaming replicas: a real replica (pg_basebackup of a throwaway primary) on 127.0.0.1.

A replica serves checks and subject reads while its measured lag is within PLANGATE_PG_REPLICA_MAX_LAG and it is
known to hold every change of the subject this node has made or heard of; otherwise the primary does. Every
write goes to the primary.
"""
from __future__ import annotations

import asyncio
import re
import time

import asyncpg
import pytest

from plangate.engine import SubjectState
from plangate.server.store import AuditEntry, Change, StoredSubject, open_store
from plangate.server.store._credits import Spend
from plangate.server.http.api import GATE
from tests import postgres


@pytest.fixture(scope="module")
def clusters():
    """A primary and a streaming replica of it, for the module's tests (each test makes its own database)."""
    primary = postgres.Cluster()
    primary.start()
    try:
        replica = postgres.Cluster(replica_of=primary)
        replica.start()
    except BaseException:
        primary.remove()
        raise
    yield primary, replica
    replica.remove()
    primary.remove()


@pytest.fixture
async def databases(clusters):
    """(primary DSN, replica DSN) of a fresh database, once the replica has it too."""
    primary, replica = clusters
    name = f"plangate_replica_{time.monotonic_ns()}"
    admin = await asyncpg.connect(primary.dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsns = postgres.with_database(primary.dsn, name), postgres.with_database(replica.dsn, name)

    async def replicated():
        try:
            await (await asyncpg.connect(dsns[1])).close()
            return True
        except (asyncpg.PostgresError, OSError):
            return False

    assert await postgres.await_until(replicated, timeout=20)
    yield dsns


class Watched:
    """A store with replicas, and where each statement it sent went (the server's port)."""

    def __init__(self, primary: str, replica: str, max_lag: float):
        self.store = open_store(primary, replicas=(replica,), replica_max_lag=max_lag)
        self.replica_port = int(replica.rsplit(":", 1)[1].split("/")[0])
        self.sent: list[tuple[int, str]] = []
        self.store.query_logger = lambda q: self.sent.append((q.conn_addr[1], q.query))

    def on_replica(self, table: str) -> int:
        return sum(1 for port, q in self.sent if port == self.replica_port and table in q)

    def on_primary(self, table: str) -> int:
        return sum(1 for port, q in self.sent if port != self.replica_port and table in q)

    async def current(self, timeout: float = 10.0) -> None:
        """Until the replica is confirmed to hold everything committed before this call."""
        replicas, now = self.store.replicas, time.monotonic()
        assert await postgres.await_until(_true(lambda: replicas.confirmed[0] >= now), timeout)


def _true(predicate):
    async def check():
        return predicate()
    return check


def fresh(subject: str) -> StoredSubject:
    return StoredSubject(SubjectState(subject, "limited_free_trial", since=100.0, plan_version="v1"), 0)


async def moved(store, subject: str, status: str) -> None:
    row = await store.load(subject)
    new = StoredSubject(row.state.with_(status=status), row.version)
    audit = AuditEntry(subject, row.state.status, status, "admin:override", "test", 101.0, "v1")
    assert await store.commit(Change(new, row.version, (audit,)))


async def on_replica(sql: str, dsn: str):
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


class TestReplicaReads:
    async def test_reads_go_to_a_current_replica_and_every_write_to_the_primary(self, databases):
        primary, replica = databases
        node = Watched(primary, replica, max_lag=1.0)
        await node.store.open()
        try:
            await node.store.migrate()
            await node.store.count(fresh("u"), "requests", 0, 3, 10, "k1", 100.0)
            await moved(node.store, "u", "paid")
            await node.current()            # past this node's own writes of u, confirmed
            row = await node.store.load("u")
            assert (row.state.status, row.version) == ("paid", 2)
            assert await node.store.used("u", [("requests", 0)]) == {("requests", 0): 3}
            assert [a.to_status for a in await node.store.transitions("u")] == ["paid"]
            assert node.on_replica("FROM subscriptions") >= 1 and node.on_replica("FROM quota_usage") == 1
            assert node.on_replica("FROM transitions") == 1
            # Writes: on the primary only (a replica would refuse them anyway: it is read-only).
            assert node.on_primary("FROM plangate_count_batch") == 1 and node.on_primary("UPDATE subscriptions") == 1
            assert not [q for port, q in node.sent if port == node.replica_port and
                        any(w in q for w in ("INSERT", "UPDATE", "DELETE", "plangate_count_batch"))]
        finally:
            await node.store.close()

    async def test_a_replica_behind_its_bound_is_left_for_the_primary_until_it_catches_up(self, databases):
        """Replay paused: the primary moves on, the replica's measured lag passes the bound, and reads go to the
        primary (never staler than the bound); once replay resumes the replica serves again."""
        primary, replica = databases
        node = Watched(primary, replica, max_lag=0.5)
        other = open_store(primary)         # another node: its writes are not this node's to know of
        await node.store.open()
        await other.open()
        try:
            await node.store.migrate()
            await other.commit(Change(fresh("v"), 0))
            await node.current()
            await on_replica("SELECT pg_wal_replay_pause()", replica)
            started = time.monotonic()
            await moved(other, "v", "canceled")
            status = None
            while status != "canceled" and time.monotonic() - started < 10:
                status = (await node.store.load("v")).state.status
                await asyncio.sleep(0.02)
            waited = time.monotonic() - started
            assert status == "canceled"
            # Up to the bound a read could still be the replica's (the old status); past it, never.
            assert waited < 0.5 + 2 * node.store.replicas.interval + 0.5, waited
            assert time.monotonic() - node.store.replicas.confirmed[0] > 0.5     # the replica, as far as is known
            assert node.store.replicas.reader(["anyone"]) is node.store._primary
            await on_replica("SELECT pg_wal_replay_resume()", replica)
            await node.current()
            before = node.on_replica("FROM subscriptions")
            assert (await node.store.load("v")).state.status == "canceled"
            assert node.on_replica("FROM subscriptions") == before + 1
        finally:
            await on_replica("SELECT pg_wal_replay_resume()", replica)
            await other.close()
            await node.store.close()

    async def test_a_change_this_node_made_or_heard_of_is_read_from_the_primary(self, databases):
        """Within the bound a replica may lag; not for a subject this node wrote, or heard another node change:
        those are read from the primary until the replica is confirmed past the change."""
        primary, replica = databases
        node = Watched(primary, replica, max_lag=30.0)
        other = open_store(primary)
        await node.store.open()
        await other.open()
        heard: list[str] = []
        try:
            await node.store.migrate()
            for subject in ("mine", "theirs", "quiet"):
                await other.commit(Change(fresh(subject), 0))
            node.store.listen(heard.append, lambda: None)
            await asyncio.wait_for(node.store._listener.connected.wait(), 10)
            await node.current()
            await on_replica("SELECT pg_wal_replay_pause()", replica)
            await moved(node.store, "mine", "paid")             # written by this node
            await moved(other, "theirs", "paid")                # another node's change, heard by NOTIFY
            assert await postgres.await_until(_true(lambda: "theirs" in heard), 5)
            assert (await node.store.load("mine")).state.status == "paid"
            assert (await node.store.load("theirs")).state.status == "paid"
            before = node.on_replica("FROM subscriptions")
            assert (await node.store.load("quiet")).version == 1            # unchanged: the replica serves it
            assert node.on_replica("FROM subscriptions") == before + 1
        finally:
            await on_replica("SELECT pg_wal_replay_resume()", replica)
            await node.store.unlisten()
            await other.close()
            await node.store.close()


    async def test_a_subject_this_node_spent_for_is_read_from_the_primary(self, databases):
        """A spend (a count that may go past the limit: credits, overage) marks its subject written, as a count
        does: a new subject's row, made by its first spend, is read from the primary while the replica lags.
        Before, the next consume read no row from the replica, conflicted on insert twenty times and was answered
        by the fail mode."""
        primary, replica = databases
        node = Watched(primary, replica, max_lag=30.0)
        await node.store.open()
        try:
            await node.store.migrate()
            await node.current()
            await on_replica("SELECT pg_wal_replay_pause()", replica)
            spent = await node.store.spend(fresh("spender"), "tokens", 0, 1, Spend(limit=10, ceiling=None, cap=None),
                                           "s1", 100.0)
            assert spent.counted
            assert (await node.store.load("spender")).version == 1
            assert node.on_replica("FROM subscriptions") == 0
        finally:
            await on_replica("SELECT pg_wal_replay_resume()", replica)
            await node.store.close()


class TestGateOnReplicas:
    async def test_a_gate_given_replicas_checks_from_them(self, databases, start_gate):
        primary, replica = databases
        gate = await start_gate(database=primary, PLANGATE_PG_REPLICAS=replica, PLANGATE_PG_REPLICA_MAX_LAG="0.5")
        store = gate.app[GATE].store
        assert [p.dsn for p in store.replicas.pools] == [replica]
        assert (await gate.consume("alice", 2, key="k1"))[1]["counted"]
        now = time.monotonic()
        assert await postgres.await_until(_true(lambda: store.replicas.confirmed[0] >= now), 10)
        status, answer = await gate.check("bob")
        assert status == 200 and answer["reason"] == "ok" and answer["used"] == 0
        assert store.replicas.reader(["bob"]) in store.replicas.pools
        status, text = await gate.get("/metrics")
        port = replica.rsplit(":", 1)[1].split("/")[0]
        lag = re.search(rf'plangate_replica_lag_seconds{{replica="127.0.0.1:{port}"}} (\S+)', text)
        assert status == 200 and lag and 0 <= float(lag.group(1)) < 0.5, text[-500:]
