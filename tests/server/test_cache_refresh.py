"""The subject cache reads busy subjects again before they expire (Gate.refresh_ahead): no request of a busy
subject waits for the store, and no answer is older than PLANGATE_CACHE_TTL. Real gates on real SQLite files
(PostgreSQL: test_multinode.py drives the same code through a real server)."""
from __future__ import annotations

import asyncio
import logging
import sqlite3
import time

from plangate.engine import compile_file
from plangate.server import gate as gate_module
from plangate.server.gate import Gate
from plangate.server.http import api
from plangate.server.metrics import Metrics
from plangate.server.store import open_store

from .conftest import ROOT, config_for

TTL = 1.0       # the least the cache refreshes with: an entry is read again from 0.75 TTL
AI = ROOT / "examples" / "ai-api" / "plans.yaml"        # tokens: 50,000 a day, then credits


def _gate_of(served) -> Gate:
    return served.app[api.GATE]


async def _keep_asking(served, subject: str, seconds: float) -> list[tuple[float, dict]]:
    """(monotonic time of the answer, the answer) of checks back to back, for `seconds`."""
    answers, until = [], time.monotonic() + seconds
    while time.monotonic() < until:
        status, body = await served.check(subject)
        assert status == 200, body
        answers.append((time.monotonic(), body))
        await asyncio.sleep(0.02)
    return answers


def _write_from_outside(database) -> None:
    """A commit by another connection, of a row no subject has: SQLite's data_version moves for the gate, which
    can no longer know that what it read is still so (nothing it holds changed, but it cannot tell)."""
    with sqlite3.connect(database) as db:
        db.execute("CREATE TABLE IF NOT EXISTS outside_writer (n INTEGER)")
        db.execute("INSERT INTO outside_writer VALUES (1)")


async def test_a_subject_asked_for_all_along_is_read_once_on_the_request_path(start_gate, database):
    served = await start_gate(PLANGATE_CACHE_TTL=str(TTL))
    gate = _gate_of(served)
    assert (await served.consume("busy", 1, key="k1"))[0] == 200     # stored: a row to keep or read again
    assert (await served.check("busy"))[0] == 200
    missed = gate.metrics.cache.labels("miss").value
    await _keep_asking(served, "busy", 3.5 * TTL)
    assert gate.metrics.cache.labels("miss").value == missed      # never again on the request path
    # Nothing but the gate wrote the file: kept every 0.75 TTL or so, off the request path, and never read again.
    assert gate.metrics.cache_renewals.value >= 3
    assert gate.metrics.cache_refreshes.value == 0
    _write_from_outside(database)                                 # now the gate cannot know: the next round reads
    await _keep_asking(served, "busy", 1.2 * TTL)
    assert gate.metrics.cache_refreshes.value == 1
    assert gate.metrics.cache.labels("miss").value == missed
    status, text = await served.get("/metrics")
    assert status == 200 and "plangate_cache_refreshes_total 1.0" in text
    assert "plangate_cache_renewals_total" in text


async def test_a_subject_kept_unread_is_read_again_after_renew_max_renewals(start_gate, monkeypatch):
    """However quiet the file, a busy entry is read again now and then: an invalidation the gate missed heals."""
    monkeypatch.setattr(gate_module, "RENEW_MAX", 2)
    served = await start_gate(PLANGATE_CACHE_TTL=str(TTL))
    gate = _gate_of(served)
    assert (await served.consume("busy", 1, key="k1"))[0] == 200
    await _keep_asking(served, "busy", 3.7 * TTL)        # due about every 0.75 TTL: 2 renewals, a reading, ...
    assert gate.metrics.cache_renewals.value >= 2
    assert gate.metrics.cache_refreshes.value >= 1


async def test_a_subject_only_ever_checked_is_kept_unread_too(start_gate):
    """Not stored (no count yet): only the gate's own first count could store it, and that updates the cache."""
    served = await start_gate(PLANGATE_CACHE_TTL=str(TTL))
    gate = _gate_of(served)
    answers = await _keep_asking(served, "checked-only", 3.5 * TTL)
    assert gate.metrics.cache.labels("miss").value == 1
    assert gate.metrics.cache_renewals.value >= 3 and gate.metrics.cache_refreshes.value == 0
    assert {a["status"] for _, a in answers} == {"limited_free_trial"}
    assert (await served.consume("checked-only", 2, key="k1"))[0] == 200
    status, body = await served.check("checked-only")
    assert status == 200 and body["used"] == 2


async def test_a_subject_nobody_asks_for_is_left_to_expire(start_gate):
    served = await start_gate(PLANGATE_CACHE_TTL=str(TTL))
    gate = _gate_of(served)
    assert (await served.check("once"))[0] == 200
    await asyncio.sleep(1.5 * TTL)
    assert gate.metrics.cache_refreshes.value == 0
    assert (await served.check("once"))[0] == 200
    assert gate.metrics.cache.labels("miss").value == 2           # expired, then read on the request path


async def test_what_another_writer_changed_shows_within_the_ttl_while_the_subject_stays_busy(start_gate, database):
    """Writes the gate cannot hear (another process on the same file) reach its answers within the TTL, however
    often the subject is asked for meanwhile: a refresh reads the store, it does not extend the old reading."""
    served = await start_gate(PLANGATE_CACHE_TTL=str(TTL))
    assert (await served.consume("counted", 3, key="k1"))[0] == 200
    assert (await served.consume("moved", 1, key="k2"))[0] == 200
    assert (await served.consume("lowered", 5, key="k3"))[0] == 200
    asking = [asyncio.create_task(_keep_asking(served, s, 4 * TTL)) for s in ("counted", "moved", "lowered")]
    await asyncio.sleep(1.2 * TTL)                                # refreshed at least once by now
    with sqlite3.connect(database) as db:                         # another writer: 40 more units; a new status
        db.execute("UPDATE quota_usage SET used = used + 40 WHERE subject = 'counted'")
        db.execute("UPDATE subscriptions SET status = 'paid', version = version + 1 WHERE subject = 'moved'")
        db.execute("UPDATE quota_usage SET used = 2 WHERE subject = 'lowered'")     # a correction: usage down
    written = time.monotonic()
    counted, moved, lowered = await asyncio.gather(*asking)
    seen = [(round(t - written, 2), a["used"], a["status"]) for t, a in counted + moved if t > written]
    assert [a["used"] for t, a in counted if t < written] and {a["used"] for t, a in counted if t < written} == {3}
    assert {a["used"] for t, a in counted if t > written + TTL} == {43}, seen
    assert {a["status"] for t, a in moved if t < written} == {"limited_free_trial"}
    assert {a["status"] for t, a in moved if t > written + TTL} == {"paid"}, seen
    assert {a["used"] for t, a in lowered if t < written} == {5}
    assert {a["used"] for t, a in lowered if t > written + TTL} == {2}, seen


async def test_a_row_the_gate_cannot_read_fails_alone_and_the_refresher_goes_on(start_gate, database, caplog):
    """Another process leaves a subject's row unreadable (its traits not JSON): the refresh that meets it reads
    its subjects one by one, logs the unreadable one and drops it from the cache (its next request reads it, and
    fails, alone); the others of its batch are read again as always, never on the request path."""
    caplog.set_level(logging.ERROR, logger="plangate")
    served = await start_gate(PLANGATE_CACHE_TTL=str(TTL))
    gate = _gate_of(served)
    for subject, key in (("broken", "k1"), ("sound", "k2")):
        assert (await served.consume(subject, 1, key=key))[0] == 200      # stored rows
    for subject in ("broken", "broken", "sound"):
        assert (await served.check(subject))[0] == 200                    # asked for since read: due together
    missed = gate.metrics.cache.labels("miss").value
    asking = asyncio.create_task(_keep_asking(served, "sound", 3 * TTL))
    with sqlite3.connect(database) as db:
        db.execute("UPDATE subscriptions SET traits = 'not json' WHERE subject = 'broken'")
    answers = await asking
    failed = [r for r in caplog.records if r.getMessage() == "cache_refresh_failed"]
    assert failed and failed[0].fields["subject"] == "broken" and "JSONDecodeError" in failed[0].fields["error"]
    assert "broken" not in gate._cache
    # "sound", every 0.75 TTL: read with "broken" after the outside write, then kept (nothing else wrote).
    assert gate.metrics.cache_refreshes.value >= 1
    assert gate.metrics.cache_refreshes.value + gate.metrics.cache_renewals.value >= 3
    assert gate.metrics.cache.labels("miss").value == missed              # never on the request path
    assert {a["used"] for _, a in answers} == {1}


async def test_a_refreshed_entry_keeps_only_the_current_windows(database):
    """A subject busy for days carries one window a meter, not every window it was ever asked about."""
    config = config_for(database, PLANGATE_CACHE_TTL=str(TTL))
    store = open_store(config.database, **config.store_options())
    await store.open()
    clock = [time.time()]
    try:
        await store.migrate()
        gate = Gate(config, compile_file(config.plans), store, Metrics(), clock=lambda: clock[0])
        for day in range(3):
            clock[0] += 86_400 * day
            await gate.count("s", "requests", 1, f"k{day}", enforce=True)
            await gate.check("s", "requests", 1)
            await gate.check("s", "requests", 1)
            await asyncio.sleep(0.75 * TTL + 0.05)
            assert await gate.refresh_due() == 1
            windows = list(gate._cache["s"].used)
            assert windows == [("requests", gate.table.window(gate._cache["s"].stored.state, "requests",
                                                              clock[0]).start)]
    finally:
        await store.close()


async def test_the_refresh_queue_stays_within_twice_the_cache(start_gate):
    served = await start_gate(PLANGATE_CACHE_TTL=str(TTL), PLANGATE_CACHE_SIZE="10")
    gate = _gate_of(served)
    for i in range(100):
        assert (await served.check(f"passing-{i}"))[0] == 200
    assert len(gate._due) <= 2 * 10 + 1


async def test_a_count_in_flight_across_a_refresh_is_kept_in_the_fresh_entry(database):
    """A consume that commits after its subject was read again adds its usage to the new entry as well as to
    the one it decided with, so the next check does not answer from usage that predates the count."""
    config = config_for(database, PLANGATE_CACHE_TTL=str(TTL))
    store = open_store(config.database, **config.store_options())
    await store.open()
    try:
        await store.migrate()
        gate = Gate(config, compile_file(config.plans), store, Metrics())
        await gate.count("s", "requests", 1, "k0", enforce=True)       # stored now (version 1)
        await gate.check("s", "requests", 1)                           # loaded, then asked for
        await gate.check("s", "requests", 1)
        await asyncio.sleep(0.75 * TTL + 0.05)                         # due
        for i in range(1, 30):
            _write_from_outside(database)                               # so that the refresh reads the row
            counting = asyncio.create_task(gate.count("s", "requests", 1, f"k{i}", enforce=True))
            await asyncio.sleep(0)                                      # the count awaits its group commit...
            await gate.refresh_due()                                    # ... while the subject is read again
            await counting
            assert (await gate.check("s", "requests", 1)).used == 1 + i
            await asyncio.sleep(0.75 * TTL + 0.01)
            if gate.metrics.cache_refreshes.value >= 3:
                break
        assert gate.metrics.cache_refreshes.value >= 3
    finally:
        await store.close()


async def test_credits_spent_across_a_refresh_are_not_answered_from_the_fresh_entry(database):
    """A spend of credits that commits after its subject was read again (and a check put the grants, as read
    before the spend, in the fresh entry) drops those grants: the next check reads the balance after the spend."""
    config = config_for(database, PLANGATE_CACHE_TTL=str(TTL), PLANGATE_PLANS=str(AI))
    store = open_store(config.database, **config.store_options())
    await store.open()
    try:
        await store.migrate()
        gate = Gate(config, compile_file(config.plans), store, Metrics())
        assert store.caches_grants
        await gate.count("a", "tokens", 50_000, "k0", enforce=True)    # the day's allowance used up
        await gate.grant("a", "tokens", 1_000, actor="ops", reason="test", key="g1", expires_at=None,
                         priority=None)
        # A check's `credits`: the balance left after the work asked about (100 here) would take its share.
        assert (await gate.check("a", "tokens", 100)).credits == 900
        await asyncio.sleep(0.75 * TTL + 0.05)                          # due
        for i in range(1, 4):
            _write_from_outside(database)                               # so that the refresh reads the rows
            spending = asyncio.create_task(gate.count("a", "tokens", 100, f"k{i}", enforce=True))
            await asyncio.sleep(0)                                      # the spend awaits its group commit...
            assert await gate.refresh_due() == 1                        # ... while the subject is read again
            assert gate.metrics.cache_refreshes.value == i
            assert (await gate.check("a", "tokens", 100)).credits == 1_000 - 100 * i
            assert (await spending).decision.credits_used == 100
            assert (await gate.check("a", "tokens", 100)).credits == 1_000 - 100 * (i + 1)
            await asyncio.sleep(0.75 * TTL + 0.01)
    finally:
        await store.close()
