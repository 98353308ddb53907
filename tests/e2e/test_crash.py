"""Crash safety: a real `plangate serve` under concurrent /v1/consume and signed webhook load is killed with
SIGKILL several times, at random moments, and started again on the same store; afterwards nothing that was
acknowledged is lost, nothing is counted twice, and no subject is half-changed. Both stores.

How the run goes (see `crash_run`):
- Consume clients count work for many subjects with unique idempotency keys and, like a real client, send the
  same key again after any failure (no answer, a 5xx, or a fail-mode answer, which counted nothing *yet*).
- One Stripe sender per subject delivers its signed events (checkout.session.completed, invoice.paid,
  invoice.payment_failed, customer.subscription.updated), one after another, each again until it is answered
  200, as Stripe does; some pairs arrive out of created order, some events are delivered twice on purpose.
  Half of the subjects' histories lie ten days back, so their timers are due and fire at each start.
- A killer waits until the acknowledged work passes random fractions of the total, kills the gate (SIGKILL:
  no shutdown, requests in flight), and starts a new one on the same store while the load keeps coming.
- When the load is done the gate is killed once more and started again; then the store is read directly.

The assertions read only the store and the answers; how the kills fall in time decides what is in flight,
never what must hold. Set PLANGATE_CRASH_SEED to replay a run's random choices (the seed is printed).
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import sqlite3
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg

from plangate.engine import compile_file
from plangate.server.config import Config
from tests.server import stripe_events as se
from tests.server.conftest import BASE_ENV, PLAN, TOKEN, GateProcess

AUTH = {"Authorization": f"Bearer {TOKEN}"}
DAY = 86400.0
NEVER = "0 0 1 1 *"           # jobs run at start (the catch-up sweep), not by the clock during the run

KILLS_UNDER_LOAD = 3          # plus one more once the load is done
WEBHOOK_SUBJECTS = 32
CONSUME_ONLY_SUBJECTS = 8
CONSUME_CLIENTS = 6
CONSUMES_PER_CLIENT = 120
RUN_LIMIT = 60.0              # seconds: a gate that stops answering fails the test instead of hanging it

# Every table the gate writes, ordered by its key: two snapshots compare equal exactly when nothing changed.
TABLES = {
    "subscriptions": "subject",
    "subscription_events": "event_id",
    "transitions": "id",
    "quota_usage": "subject, meter, window_start",
    "usage_keys": "key",
    "payments": "invoice_id",
}


def roomy_plan(folder: Path) -> Path:
    """plans.yaml with quotas no run reaches: every refusal then means a bug, not a full window."""
    text = PLAN.read_text()
    for old, new in (("requests: {limit: 20, per: day}", "requests: {limit: 1000000, per: day}"),
                     ("requests: {limit: 500, per: day}", "requests: {limit: 1000000, per: day}"),
                     ("requests: {limit: 5, per: day}", "requests: {limit: 1000000, per: day}"),
                     ("requests: {limit: 5000, per: month, anchor: billing}",
                      "requests: {limit: 1000000, per: month, anchor: billing}")):
        assert old in text, old
        text = text.replace(old, new)
    path = folder / "plans.yaml"
    path.write_text(text)
    return path


# --- the store, read directly ------------------------------------------------------------------------------

class SQLiteFile:
    def __init__(self, path: str):
        self.path = path

    async def rows(self, sql: str) -> list[tuple]:
        def read():
            db = sqlite3.connect(self.path)
            try:
                return [tuple(r) for r in db.execute(sql).fetchall()]
            finally:
                db.close()
        return await asyncio.to_thread(read)


class PostgresDatabase:
    def __init__(self, dsn: str):
        self.dsn = dsn

    async def rows(self, sql: str) -> list[tuple]:
        conn = await asyncpg.connect(self.dsn)
        try:
            return [tuple(r) for r in await conn.fetch(sql)]
        finally:
            await conn.close()


async def snapshot(db) -> dict[str, list[tuple]]:
    return {table: await db.rows(f"SELECT * FROM {table} ORDER BY {key}") for table, key in TABLES.items()}


# --- the load ----------------------------------------------------------------------------------------------

def stripe_history(rng: random.Random, i: int, now: float) -> tuple[str, list[dict]]:
    """One subject's Stripe events: a checkout that links it, then 3 to 6 payment and subscription events,
    created a minute apart; for a third of the subjects two of those are delivered out of created order."""
    subject, cus, sub = f"crash-u{i}", f"cus_crash_{i}", f"sub_crash_{i}"
    # Odd subjects: ten days ago, paid two days at a time, so that trial and grace timers are due at each start.
    base, period = (now - 10 * DAY, 2 * DAY) if i % 2 else (now - 3600.0, 30 * DAY)
    events = [se.event("checkout.session.completed", se.checkout(subject, cus, sub), base, f"evt_crash_{i}_0")]
    for k in range(1, rng.randint(4, 7)):
        created = base + 60.0 * k
        kind = rng.choice(("invoice.paid", "invoice.payment_failed", "customer.subscription.updated"))
        if kind == "customer.subscription.updated":
            obj = se.subscription(rng.choice(("active", "past_due")), subject, sub_id=sub, customer=cus,
                                  start=created, end=created + period)
        else:
            obj = se.invoice("paid" if kind == "invoice.paid" else "open", sub_id=sub, customer=cus,
                             inv_id=f"in_crash_{i}_{k}", period_end=created + period)
        events.append(se.event(kind, obj, created, f"evt_crash_{i}_{k}"))
    if i % 3 == 0:
        k = rng.randrange(1, len(events) - 1)
        events[k], events[k + 1] = events[k + 1], events[k]
    return subject, events


@dataclass
class Run:
    """What the clients were told, and what went wrong on the way."""

    url: str | None                  # None while the gate is down: nothing is sent to a port it no longer holds
    counted: dict[str, tuple[str, int]] = field(default_factory=dict)     # key -> (subject, amount): 200, counted
    refused: dict[str, str] = field(default_factory=dict)                 # key -> reason: 200, not counted
    acked_events: set[str] = field(default_factory=set)                   # 200, not duplicate
    first_answer_duplicate: set[str] = field(default_factory=set)         # committed, answer lost in a kill
    counted_before_kill: int = 0     # a count whose first 200 said duplicate: committed, answer lost in a kill
    progress: int = 0
    no_answer: int = 0           # connection refused or reset: the gate was down
    fail_mode: int = 0           # consume answered by the fail mode: store too slow, or the subject kept changing
    store_unavailable: int = 0   # webhook 500 store_unavailable: Stripe delivers again
    unexpected: list[str] = field(default_factory=list)
    load_done: bool = False


async def _post(session: aiohttp.ClientSession, run: Run, path: str, **kw):
    if run.url is None:
        run.no_answer += 1
        return None, None
    try:
        async with session.post(run.url + path, **kw) as r:
            text = await r.text()
            try:
                return r.status, json.loads(text)
            except ValueError:
                return r.status, text
    except (TimeoutError, aiohttp.ClientError):
        run.no_answer += 1
        return None, None


async def consume_client(session, run: Run, rng: random.Random, name: str, subjects: list[str], n: int) -> None:
    for i in range(n):
        key, subject, amount = f"{name}-{i}", rng.choice(subjects), rng.randint(1, 3)
        body = {"subject": subject, "meter": "requests", "amount": amount, "idempotency_key": key}
        while True:
            status, answer = await _post(session, run, "/v1/consume", json=body, headers=AUTH)
            if status == 200 and answer["counted"]:
                run.counted[key] = (subject, amount)
                run.counted_before_kill += answer["duplicate"]
                break
            if status == 200 and answer["reason"] in ("fail_open", "fail_closed"):
                run.fail_mode += 1          # counted nothing yet: the same key again
            elif status == 200:
                run.refused[key] = answer["reason"]
                break
            elif status is not None:
                run.unexpected.append(f"consume {key}: {status} {answer}")
                if status < 500:
                    break
            await asyncio.sleep(0.02)
        run.progress += 1
        if key in run.counted and rng.random() < 0.1:       # the client's own retry after a lost answer
            while True:
                status, answer = await _post(session, run, "/v1/consume", json=body, headers=AUTH)
                if status == 200 and answer["reason"] not in ("fail_open", "fail_closed"):
                    if not (answer["counted"] and answer["duplicate"]):
                        run.unexpected.append(f"consume {key} again: {answer}")
                    break
                await asyncio.sleep(0.02)


async def deliver(session, run: Run, evt: dict) -> dict | None:
    """One event, delivered again until the gate answers 200 (as Stripe does), signed anew each time."""
    body = se.encode(evt)
    while True:
        status, answer = await _post(session, run, "/webhook/stripe", data=body,
                                     headers={"Stripe-Signature": se.sign(body), "Content-Type": "application/json"})
        if status == 200:
            return answer
        if status == 500 and isinstance(answer, dict) and answer.get("error") == "store_unavailable":
            run.store_unavailable += 1
        elif status is not None:
            run.unexpected.append(f"webhook {evt['id']}: {status} {answer}")
            if status < 500:
                return None
        await asyncio.sleep(0.02)


async def stripe_sender(session, run: Run, rng: random.Random, events: list[dict]) -> None:
    for evt in events:
        answer = await deliver(session, run, evt)
        if answer is None:
            continue
        (run.first_answer_duplicate if answer["duplicate"] else run.acked_events).add(evt["id"])
        run.progress += 1
        if rng.random() < 0.2:                                # Stripe's at-least-once: the same event again
            again = await deliver(session, run, evt)
            if again is not None and not again["duplicate"]:
                run.unexpected.append(f"webhook {evt['id']} again: {again}")


async def killer(run: Run, rng: random.Random, total: int, restart) -> list[int]:
    """Kill the gate when the acknowledged work passes random fractions of the total; the progress at each."""
    at = []
    for k in range(KILLS_UNDER_LOAD):
        lo = 0.08 + 0.8 * k / KILLS_UNDER_LOAD
        target = rng.uniform(lo, lo + 0.6 / KILLS_UNDER_LOAD) * total
        while run.progress < target and not run.load_done:
            await asyncio.sleep(0.005)
        # A random moment past the target (not always on an answer's heels), cut short while 5% of the work
        # is still to come: on a fast machine the last fifth of the load takes about as long as this pause.
        pause_until = time.monotonic() + rng.uniform(0.0, 0.03)
        while time.monotonic() < pause_until and run.progress < target + 0.05 * total:
            await asyncio.sleep(0.001)
        at.append(run.progress)
        await restart()
    return at


# --- one run -----------------------------------------------------------------------------------------------

def start_gate(env: dict, folder: Path) -> GateProcess:
    """A gate that says it listens on its own port. Other tests on this machine take free ports too: one may
    take the port between GateProcess's pick and the gate's bind, and then answer in the gate's place."""
    problem = ""
    for _ in range(3):
        try:
            gate = GateProcess(env, folder)
        except RuntimeError as exc:          # it exited: e.g. the port was taken before it could bind
            problem = str(exc)
            continue
        deadline = time.monotonic() + 15.0
        while gate.proc.poll() is None and time.monotonic() < deadline:
            if f"listening on http://127.0.0.1:{gate.port} " in gate.output()[0]:
                return gate
            time.sleep(0.02)
        problem = str(gate.stop())
    raise RuntimeError(f"plangate serve did not start: {problem}")


async def crash_run(tmp_path: Path, database: str, db) -> None:
    seed = int(os.environ.get("PLANGATE_CRASH_SEED") or random.randrange(2**32))
    print(f"crash run on {database.split(':')[0] if '://' in database else 'sqlite'}: PLANGATE_CRASH_SEED={seed}")
    rng = random.Random(seed)
    plan = roomy_plan(tmp_path)
    table = compile_file(plan)
    env = {**BASE_ENV, "PLANGATE_DATABASE": database, "PLANGATE_PLANS": str(plan),
           "STRIPE_WEBHOOK_SECRET": se.SECRET, "PLANGATE_PG_POOL_MAX": "8",
           "PLANGATE_SWEEP_SCHEDULE": NEVER, "PLANGATE_RECONCILE_SCHEDULE": NEVER, "PLANGATE_CLEANUP_SCHEDULE": NEVER}
    # The claim under test is the default: WAL with synchronous=NORMAL.
    assert "PLANGATE_SQLITE_SYNCHRONOUS" not in env
    assert Config.from_env(env, env_file=None).sqlite_synchronous == "NORMAL"

    now = time.time()
    histories = [stripe_history(rng, i, now) for i in range(WEBHOOK_SUBJECTS)]
    all_events = {e["id"]: e for _, events in histories for e in events}
    event_subject = {e["id"]: subject for subject, events in histories for e in events}
    subjects = [s for s, _ in histories] + [f"crash-c{j}" for j in range(CONSUME_ONLY_SUBJECTS)]
    total = CONSUME_CLIENTS * CONSUMES_PER_CLIENT + len(all_events)

    gates = [start_gate(env, tmp_path)]
    run = Run(gates[-1].url)

    async def restart() -> None:
        old, run.url = gates[-1], None
        old.proc.kill()                                       # SIGKILL: no shutdown, nothing flushed by the gate
        await asyncio.to_thread(old.proc.wait)
        assert old.proc.returncode == -9
        gates.append(await asyncio.to_thread(start_gate, env, tmp_path))
        run.url = gates[-1].url

    started = time.monotonic()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
            async def load():
                await asyncio.gather(
                    *(consume_client(s, run, random.Random(rng.random()), f"key-{n}", subjects, CONSUMES_PER_CLIENT)
                      for n in range(CONSUME_CLIENTS)),
                    *(stripe_sender(s, run, random.Random(rng.random()), events) for _, events in histories))
                run.load_done = True

            load_task = asyncio.ensure_future(load())
            kill_task = asyncio.ensure_future(killer(run, random.Random(rng.random()), total, restart))
            kills_at = await asyncio.wait_for(kill_task, RUN_LIMIT)
            await asyncio.wait_for(load_task, RUN_LIMIT)
            loaded = time.monotonic() - started
            assert not run.unexpected, run.unexpected[:20]

            await restart()                                   # once more, with nothing in flight
            before = await snapshot(db)
            await check_store(db, table, run, all_events, event_subject)

            # Every acknowledged event and count, sent again to the gate started last: all duplicates.
            lanes = asyncio.Semaphore(8)

            async def again_event(event_id: str):
                async with lanes:
                    return event_id, await deliver(s, run, all_events[event_id])

            async def again_count(key: str, subject: str, amount: int):
                async with lanes:
                    return key, *await _post(s, run, "/v1/consume", headers=AUTH, json={
                        "subject": subject, "meter": "requests", "amount": amount, "idempotency_key": key})

            events_again = await asyncio.wait_for(asyncio.gather(
                *(again_event(e) for e in sorted(run.acked_events | run.first_answer_duplicate))), RUN_LIMIT)
            for event_id, answer in events_again:
                assert answer is not None and answer["duplicate"], (event_id, answer)
            counts_again = await asyncio.wait_for(asyncio.gather(
                *(again_count(k, subject, amount) for k, (subject, amount) in sorted(run.counted.items()))), RUN_LIMIT)
            for key, status, answer in counts_again:
                assert status == 200 and answer["counted"] and answer["duplicate"], (key, status, answer)
            assert await snapshot(db) == before, "a repeated event or count changed the store"
    finally:
        for g in gates:
            g.stop()
    elapsed = time.monotonic() - started

    fired_at_start = 0
    for g in gates:
        out, err = g.output()
        assert "internal_error" not in out + err and "Traceback" not in out + err, (out + err)[-3000:]
        for line in err.splitlines():
            if '"started"' in line and (entry := json.loads(line)).get("event") == "started":
                fired_at_start += entry["timers_fired_at_start"]
    assert all(k < total for k in kills_at), ("a kill came after the load was done", kills_at, total)
    assert len(gates) == KILLS_UNDER_LOAD + 2
    assert set(run.refused) == set(), run.refused     # the quotas are out of reach; every status allows work
    print(f"  {len(gates) - 1} SIGKILLs (at {kills_at} of {total} acknowledgements, then one idle); "
          f"{len(run.counted)} counts and {len(all_events)} events ({len(run.acked_events)} acknowledged as new, "
          f"{len(run.first_answer_duplicate)} first answered duplicate: committed before a kill; "
          f"{run.counted_before_kill} counts the same); "
          f"{run.no_answer} requests without an answer, {run.fail_mode} fail-mode answers, "
          f"{run.store_unavailable} webhook 500s; {fired_at_start} timers fired at starts; "
          f"load {loaded:.1f} s, all {elapsed:.1f} s")


async def check_store(db, table, run: Run, all_events: dict[str, dict], event_subject: dict[str, str]) -> None:
    rows = await db.rows("SELECT subject, status, timer_due FROM subscriptions")
    subjects = {s: status for s, status, _ in rows}
    timer_of = {s: timer for s, _, timer in rows}

    # Counts: every acknowledged key is stored as it was asked; each window holds exactly its stored keys.
    keys = {r[0]: r[1:] for r in await db.rows("SELECT key, subject, meter, amount, window_start FROM usage_keys")}
    lost = sorted(k for k in run.counted if k not in keys)
    assert not lost, f"{len(lost)} acknowledged counts lost: {lost[:10]}"
    assert set(keys) == set(run.counted), "a key no client was told was counted"    # each key was sent until counted
    for key, (subject, amount) in run.counted.items():
        assert keys[key][:3] == (subject, "requests", amount), (key, keys[key])
    by_window: dict[tuple, int] = defaultdict(int)
    for subject, meter, amount, window_start in keys.values():
        by_window[(subject, meter, window_start)] += amount
    used = {(s, m, w): n for s, m, w, n in await db.rows("SELECT subject, meter, window_start, used FROM quota_usage")}
    assert {w: n for w, n in used.items() if n} == dict(by_window), \
        "a window's count differs from the sum of its stored keys (counted twice, or counted without its key)"
    for subject, *_ in list(used) + list(keys.values()):
        assert subject in subjects, f"usage of {subject} without its subject row"

    # Events: every one acknowledged is stored; in the end every event sent was stored, once, and linked.
    stored = {r[0]: r[1:] for r in await db.rows("SELECT event_id, subject, outcome FROM subscription_events")}
    missing = sorted((run.acked_events | run.first_answer_duplicate) - set(stored))
    assert not missing, f"acknowledged events lost: {missing}"
    assert set(stored) == set(all_events), set(stored) ^ set(all_events)
    for event_id, (subject, outcome) in stored.items():
        assert (subject, outcome != "pending") == (event_subject[event_id], True), (event_id, subject, outcome)
    payments = dict(await db.rows("SELECT invoice_id, subject FROM payments"))
    for event_id, evt in all_events.items():
        obj = evt["data"]["object"]
        if obj["object"] == "invoice":
            assert payments.get(obj["id"]) == event_subject[event_id], (event_id, payments.get(obj["id"]))
    for subject in set(event_subject.values()):
        assert subject in subjects, f"{subject}: its acknowledged checkout left no subject row"

    # No subject half-changed: a status of the plan, a timer exactly when the status has one, the audit
    # log's last word is the stored status, its transitions a chain from the initial status, and no
    # transition without its subject.
    statuses = {s.name: s for s in table.plan.statuses}
    initial = next(s.name for s in table.plan.statuses if s.initial)
    last: dict[str, str] = {}
    for subject, from_status, to_status in await db.rows(
            "SELECT subject, from_status, to_status FROM transitions ORDER BY id"):
        assert subject in subjects, f"a transition of {subject} without its subject row"
        assert from_status == last.get(subject, initial), \
            f"{subject}: a transition from {from_status}, but the one before went to {last.get(subject, initial)}"
        last[subject] = to_status
    for subject, status in subjects.items():
        assert status in statuses, (subject, status)
        assert last.get(subject, status) == status, \
            f"{subject}: stored {status}, but its last transition went to {last[subject]}"
        has_timer = statuses[status].expires_after is not None
        assert (timer_of[subject] is not None) == has_timer, (subject, status, timer_of[subject])


async def test_sqlite_file_survives_sigkill_under_load(tmp_path):
    path = str(tmp_path / "crash.sqlite3")
    await crash_run(tmp_path, path, SQLiteFile(path))
    assert (await SQLiteFile(path).rows("PRAGMA journal_mode")) == [("wal",)]


async def test_postgresql_survives_sigkill_under_load(tmp_path, pg_dsn):
    await crash_run(tmp_path, pg_dsn, PostgresDatabase(pg_dsn))
