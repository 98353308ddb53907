"""Several `plangate serve` processes on 127.0.0.1 sharing one real PostgreSQL database."""
from __future__ import annotations

import asyncio
import logging
import statistics
import time
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from plangate.engine import SubjectState, compile_file
from plangate.server.gate import Gate
from plangate.server.metrics import Metrics
from plangate.server.store import StoredSubject, open_store
from plangate.server.store._pg_listener import Listener
from plangate.server.store._postgres import PostgresStore
from tests import postgres

from . import stripe_events as se
from .conftest import BASE_ENV, PLAN, GateProcess, config_for, token_for

DAY = 86400.0


def plan_with_daily_limit(folder: Path, limit: int) -> Path:
    path = folder / "plans.yaml"
    path.write_text(PLAN.read_text().replace("requests: {limit: 20, per: day}",
                                             f"requests: {{limit: {limit}, per: day}}"))
    return path


@pytest.fixture
def nodes(tmp_path, pg_dsn):
    """nodes(n, **env): n gate processes on one PostgreSQL database."""
    started: list[GateProcess] = []

    def start(n: int = 2, **env) -> list[GateProcess]:
        full = {**BASE_ENV, "PLANGATE_DATABASE": pg_dsn, "STRIPE_WEBHOOK_SECRET": se.SECRET,
                "PLANGATE_PG_POOL_MAX": "8", **env}
        for _ in range(n):
            started.append(GateProcess(full, tmp_path))
        return started[-n:]

    yield start
    for node in started:
        node.stop()


async def post(session: aiohttp.ClientSession, url: str, body: dict, headers: dict | None = None):
    auth = {"Authorization": f"Bearer {token_for(url)}"}
    async with session.post(url, json=body, headers=headers or auth) as r:
        return r.status, await r.json()


async def webhook(session, node: GateProcess, evt: dict):
    body = se.encode(evt)
    async with session.post(node.url + "/webhook/stripe", data=body,
                            headers={"Stripe-Signature": se.sign(body)}) as r:
        return r.status, await r.json()


async def db_rows(dsn: str, sql: str, *args):
    conn = await asyncpg.connect(dsn)
    try:
        return [tuple(r) for r in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


class TestAcrossNodes:
    async def test_concurrent_consume_across_nodes_admits_exactly_the_limit(self, nodes, tmp_path, pg_dsn):
        # One hot row takes every count in turn: give the store time, so that every answer is a real one.
        a, b = nodes(2, PLANGATE_PLANS=str(plan_with_daily_limit(tmp_path, 37)), PLANGATE_STORE_TIMEOUT="10")
        async with aiohttp.ClientSession() as s:
            bodies = [{"subject": "shared", "meter": "requests", "amount": 1, "idempotency_key": f"k{i}"}
                      for i in range(100)]
            answers = await asyncio.gather(*(post(s, (a if i % 2 else b).url + "/v1/consume", body)
                                             for i, body in enumerate(bodies)))
        assert all(status == 200 for status, _ in answers)
        assert {answer["reason"] for _, answer in answers} == {"ok", "quota_exhausted"}
        assert sum(answer["counted"] for _, answer in answers) == 37
        assert await db_rows(pg_dsn, "SELECT sum(used)::int FROM quota_usage WHERE subject = 'shared'") == [(37,)]

    async def test_one_event_delivered_to_both_nodes_applies_once(self, nodes, pg_dsn):
        a, b = nodes(2)
        evt = se.event("checkout.session.completed", se.checkout("alice"), time.time())
        async with aiohttp.ClientSession() as s:
            answers = await asyncio.gather(*(webhook(s, node, evt) for node in (a, b, a, b, a, b)))
        assert all(status == 200 for status, _ in answers)
        assert sum(not answer["duplicate"] for _, answer in answers) == 1
        assert await db_rows(pg_dsn, "SELECT count(*)::int FROM transitions") == [(1,)]
        assert await db_rows(pg_dsn, "SELECT count(*)::int FROM subscription_events") == [(1,)]

    async def test_a_transition_on_one_node_reaches_the_other_nodes_cache(self, nodes):
        a, b = nodes(2, PLANGATE_CACHE_TTL="300")
        delays = []
        async with aiohttp.ClientSession() as s:
            for i in range(10):
                subject = f"user{i}"
                _, first = await post(s, b.url + "/v1/check", {"subject": subject, "meter": "requests"})
                assert first["status"] == "limited_free_trial"          # now cached on b for 300 s
                await post(s, a.url + f"/v1/subjects/{subject}/transition", {"to": "closed", "reason": "test"})
                moved = time.perf_counter()

                async def seen_on_b(subject=subject):
                    _, d = await post(s, b.url + "/v1/check", {"subject": subject, "meter": "requests"})
                    return d["status"] == "closed"

                assert await postgres.await_until(seen_on_b, timeout=5.0, step=0.002)
                delays.append(time.perf_counter() - moved)
        # Bounded: a NOTIFY travels in milliseconds; the cache TTL (300 s) plays no part.
        assert max(delays) < 2.0, delays
        print(f"invalidation delay: p50 {statistics.median(delays) * 1000:.1f} ms, max {max(delays) * 1000:.1f} ms")

    async def test_both_nodes_sweeping_fire_each_timer_once(self, nodes, pg_dsn):
        a, b = nodes(2, PLANGATE_SWEEP_SCHEDULE="0 0 1 1 *")
        async with aiohttp.ClientSession() as s:
            for i in range(40):
                evt = se.event("checkout.session.completed", se.checkout(f"u{i}", f"cus_{i}", f"sub_{i}"),
                               time.time() - 8 * DAY)
                assert (await webhook(s, a, evt))[0] == 200
            await asyncio.gather(*(post(s, node.url + "/v1/jobs/sweep", {}) for node in (a, b, a, b)))
        fired = await db_rows(pg_dsn, "SELECT subject, count(*)::int FROM transitions WHERE trigger = 'timer' "
                                      "GROUP BY subject")
        assert len(fired) == 40 and all(n == 1 for _, n in fired)
        assert await db_rows(pg_dsn, "SELECT DISTINCT status FROM subscriptions") == [("billing_problem",)]


class TestPostgresRestart:
    async def test_restart_under_load_loses_and_doubles_nothing(self, tmp_path, pg_cluster):
        dsn = pg_cluster.dsn
        plan = plan_with_daily_limit(tmp_path, 1_000_000)
        env = {**BASE_ENV, "PLANGATE_DATABASE": dsn, "PLANGATE_PLANS": str(plan), "PLANGATE_STORE_TIMEOUT": "0.5",
               "PLANGATE_PG_CONNECT_TIMEOUT": "1", "PLANGATE_PG_COMMAND_TIMEOUT": "2"}
        node = GateProcess(env, tmp_path)
        acknowledged: set[str] = set()
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
                stop = asyncio.Event()

                async def client(n: int):
                    i = 0
                    while not stop.is_set() and i < 2000:
                        key = f"c{n}-{i}"
                        try:
                            status, body = await post(s, node.url + "/v1/usage",
                                                      {"subject": f"s{n}", "meter": "requests", "amount": 1,
                                                       "idempotency_key": key})
                        except aiohttp.ClientError:
                            status, body = 0, {}
                        if status == 200 and body["counted"]:
                            acknowledged.add(key)
                            i += 1
                        else:
                            await asyncio.sleep(0.05)      # retry the same key, as a client should

                clients = [asyncio.create_task(client(n)) for n in range(4)]
                await asyncio.sleep(1.0)
                pg_cluster.stop("immediate")                  # the database goes away under load
                await asyncio.sleep(1.5)
                status, ready = await post(s, node.url + "/v1/check", {"subject": "probe", "meter": "requests"})
                assert status == 200 and ready["reason"] in ("fail_open", "fail_closed", "ok")
                async with s.get(node.url + "/readyz") as r:
                    assert r.status == 503
                pg_cluster.start()
                await asyncio.sleep(2.0)
                stop.set()
                await asyncio.gather(*clients)
                async with s.get(node.url + "/readyz") as r:
                    assert r.status == 200                    # recovered by itself
        finally:
            node.stop()
        rows = await db_rows(dsn, "SELECT key FROM usage_keys")
        stored_keys = {r[0] for r in rows}
        used = await db_rows(dsn, "SELECT coalesce(sum(used), 0)::int FROM quota_usage")
        assert acknowledged <= stored_keys                    # nothing acknowledged was lost
        assert used == [(len(stored_keys),)]                  # nothing counted twice
        assert len(acknowledged) > 50


class TestChecksFromPushedUsage:
    """A node answers a check from the usage it holds while the database pushes it every count (plangate_usage);
    when it cannot know (its listener is gone), it reads the database."""

    async def test_a_count_on_one_node_reaches_the_others_checks_without_a_read(self, pg_dsn):
        config = config_for(pg_dsn)
        table = compile_file(config.plans)
        nodes, logs = [], []
        try:
            for _ in range(2):
                store = PostgresStore(pg_dsn)
                logs.append([])
                store.query_logger = logs[-1].append
                await store.open()
                await store.migrate()
                gate = Gate(config, table, store, Metrics())
                store.listen(gate.invalidate, gate.invalidate_all, on_usage=gate.usage_counted)
                await asyncio.wait_for(store._listener.connected.wait(), 10)
                nodes.append(gate)
            a, b = nodes
            await a.count("u", "requests", 1, "k0", enforce=True)
            assert (await b.check("u", "requests", 1)).used == 1      # b reads it once, then holds it
            reads = lambda: [q for q in logs[1] if "quota_usage" in q.query]     # noqa: E731
            assert len(reads()) == 1 and b.store.caches_usage
            for i in range(1, 6):
                await a.count("u", "requests", 2, f"k{i}", enforce=True)

                async def seen(used=1 + 2 * i):
                    return (await b.check("u", "requests", 1)).used == used
                assert await postgres.await_until(seen, timeout=5.0, step=0.002)
            assert len(reads()) == 1                                  # every figure came pushed, none read
            # No listener, no knowing: every check reads the database again.
            await b.store.unlisten()
            assert not b.store.caches_usage
            await a.count("u", "requests", 4, "k9", enforce=True)
            assert (await b.check("u", "requests", 1)).used == 15
            assert (await b.check("u", "requests", 1)).used == 15
            assert len(reads()) == 3
        finally:
            for gate in nodes:
                await gate.store.unlisten()
                await gate.store.close()

    async def test_a_lost_listener_is_said_once_and_so_is_its_return(self, pg_dsn, caplog):
        """While the listener is away the node cannot hear other nodes: an operator must see it go and come back
        (nothing was logged)."""
        caplog.set_level(logging.INFO, logger="plangate")
        store = PostgresStore(pg_dsn)
        await store.open()
        resets = []
        try:
            store.listen(lambda s: None, lambda: resets.append(1))
            await asyncio.wait_for(store._listener.connected.wait(), 10)
            other = await asyncpg.connect(pg_dsn)
            try:
                await other.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
                                    "current_database() AND pid <> pg_backend_pid()")
            finally:
                await other.close()

            async def said(event: str) -> bool:
                return any(r.getMessage() == event for r in caplog.records)
            assert await postgres.await_until(lambda: said("pg_listener_back"), timeout=10)
            events = [r.getMessage() for r in caplog.records if r.getMessage().startswith("pg_listener")]
            assert events == ["pg_listener_lost", "pg_listener_back"] and len(resets) >= 2
        finally:
            await store.unlisten()
            await store.close()
        assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("pg_listener")] == \
            ["pg_listener_lost", "pg_listener_back"]        # stopping it is no loss

    async def test_a_listener_that_never_connected_is_said_unavailable_not_lost(self, pg_dsn, caplog):
        """A first connect that fails lost nothing (nothing was listening): the log says the listener is not
        available yet, then that it connected, and keeps "lost" and "back" for a listener that was there."""
        caplog.set_level(logging.INFO, logger="plangate")
        dsn = postgres.with_database(pg_dsn, f"plangate_test_later_{time.monotonic_ns()}")
        listener = Listener(dsn, lambda s: None, lambda: None, connect_timeout=2.0)
        events = lambda: [r.getMessage() for r in caplog.records if r.getMessage().startswith("pg_listener")]  # noqa: E731
        listener.start()
        try:
            async def said() -> bool:
                return bool(events())
            assert await postgres.await_until(said, timeout=10)
            [record] = [r for r in caplog.records if r.getMessage().startswith("pg_listener")]
            assert (record.getMessage(), record.levelname) == ("pg_listener_unavailable", "WARNING")
            assert not listener.connected.is_set()
            await postgres._admin(f'CREATE DATABASE "{dsn.rsplit("/", 1)[-1]}"', pg_dsn)
            await asyncio.wait_for(listener.connected.wait(), 15)
            assert events() == ["pg_listener_unavailable", "pg_listener_connected"]
        finally:
            await listener.stop()
            await postgres.drop_database(dsn)

    async def test_without_pushed_usage_every_check_reads_the_database(self, pg_dsn):
        store = open_store(pg_dsn, push_usage=False)
        heard: list[tuple] = []
        await store.open()
        try:
            await store.migrate()
            store.listen(lambda s: None, lambda: None, on_usage=lambda *usage: heard.append(usage))
            await asyncio.wait_for(store._listener.connected.wait(), 10)
            assert not store.caches_usage
            other = open_store(pg_dsn)
            await other.open()
            try:
                await other.count(StoredSubject(SubjectState("u", "paid", since=1.0, plan_version="v"), 0),
                                  "requests", 0, 1, None, "k", 1.0)
                await other.count(await other.load("u"), "requests", 0, 1, None, "k2", 1.0)
            finally:
                await other.close()
            await asyncio.sleep(0.2)
            assert heard == []          # this node does not listen for counts, whoever sends them
        finally:
            await store.unlisten()
            await store.close()
