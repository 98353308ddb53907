"""The shared store: PostgreSQL through an asyncpg pool, for several gate nodes.

Counting is one INSERT ... ON CONFLICT ... DO UPDATE ... WHERE ... RETURNING; a committed state change
NOTIFYs the other nodes (channel plangate_subjects, payload: the subject) so they drop it from their caches.
"""
from __future__ import annotations

import asyncio
import contextlib
import time

import asyncpg

from ._base import (AuditEntry, Change, Counted, DuplicateEvent, EventRecord, IdempotencyConflict, Payment, Store,
                    StoreError, StoredSubject, state_from_json, state_json)
from ._credits import grant_values
from ._migrations import migrations, statements
from ._postgres_credits import _INSERT_GRANT, PostgresCredits
from ._postgres_personal import PostgresPersonalData
from ._postgres_plans import PLAN_CHANNEL, PostgresPlans
from ._rows import EVENT_COLUMNS, SUBJECT_COLUMNS, WRITTEN, event_from_row, now_of, subject_from_row, subject_values

CHANNEL = "plangate_subjects"
_MIGRATION_LOCK = 0x706C_6731     # advisory lock ids: one node migrates at a time
_JOB_LOCK_BASE = 0x706C_6800
_SUBJECT_COLUMNS = SUBJECT_COLUMNS
_EVENT_COLUMNS = EVENT_COLUMNS
_INSERT_SUBJECT = (f"INSERT INTO subscriptions (subject, {', '.join(WRITTEN)}, version, updated_at) VALUES "
                   f"($1, {', '.join(f'${i}' for i in range(2, len(WRITTEN) + 2))}, 1, ${len(WRITTEN) + 2})")
_UPDATE_SUBJECT = (f"UPDATE subscriptions SET {', '.join(f'{c} = ${i}' for i, c in enumerate(WRITTEN, 1))}, "
                   f"version = version + 1, updated_at = ${len(WRITTEN) + 1} "
                   f"WHERE subject = ${len(WRITTEN) + 2} AND version = ${len(WRITTEN) + 3} RETURNING 1")
# A count in one round trip (migration 5): $8 is the subject's version the decision was made on.
_COUNT = "SELECT * FROM plangate_count($1, $2, $3, $4, $5, $6, $7, $8)"
_TYPES = {"status": "text", "tier": "text", "plan_version": "text", "stripe_customer": "text",
          "stripe_subscription": "text", "fold_state": "text", "stripe_subscriptions": "text", "quantity": "int8",
          "addons": "text", "traits": "text"}   # others: float8
# The subject a Stripe id leads to: the row's own subscription or customer, else a link of its events (another
# subscription it holds or held, a charge, a payment intent), in that order of preference.
_FIND = ("SELECT subject FROM (SELECT subject, 0 AS rank FROM subscriptions WHERE stripe_subscription = $1 "
         "UNION ALL SELECT subject, 1 FROM stripe_links WHERE stripe_id = $1 "
         "UNION ALL SELECT subject, 2 FROM subscriptions WHERE stripe_customer = $2 "
         "UNION ALL SELECT subject, 3 + array_position($3::text[], stripe_id) FROM stripe_links "
         "WHERE stripe_id = ANY($3::text[])) AS found ORDER BY rank LIMIT 1")
_BATCH_UPDATE = (
    f"UPDATE subscriptions SET {', '.join(f'{c} = v.{c}' for c in WRITTEN)}, version = subscriptions.version + 1, "
    "updated_at = v.since FROM unnest($1::text[], $2::bigint[], "
    + ", ".join(f"${i}::{_TYPES.get(c, 'float8')}[]" for i, c in enumerate(WRITTEN, 3))
    + f") AS v (subject, expected, {', '.join(WRITTEN)}) "
    "WHERE subscriptions.subject = v.subject AND subscriptions.version = v.expected RETURNING subscriptions.subject")
_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, ConnectionError, asyncio.TimeoutError)


class PostgresStore(PostgresCredits, PostgresPersonalData, PostgresPlans, Store):
    caches_usage = False      # other nodes count too: usage is read from the database on every check
    channel = CHANNEL

    def __init__(self, dsn: str, *, pool_min: int = 1, pool_max: int = 10, connect_timeout: float = 5.0,
                 command_timeout: float = 10.0):
        self.dsn = dsn
        self.pool_min, self.pool_max = pool_min, pool_max
        self.connect_timeout, self.command_timeout = connect_timeout, command_timeout
        self._pool: asyncpg.Pool | None = None
        self._turns: asyncio.Semaphore | None = None     # made by open(), in the loop that uses it

    # --- life cycle ----------------------------------------------------------------------------

    async def open(self) -> None:
        # Turns at the pool, one per connection, a freed one handed to the longest waiter. asyncpg's own wait is
        # an asyncio queue, where a woken waiter that finds the connection taken already (by a caller that came
        # later and never waited) waits again at the back: at 32 checks in flight on 10 connections some waited
        # past PLANGATE_STORE_TIMEOUT and were answered by the fail mode (p95 161 ms; in turns, p99 5-6 ms).
        self._turns = asyncio.Semaphore(self.pool_max)
        try:
            self._pool = await asyncpg.create_pool(
                self.dsn, min_size=self.pool_min, max_size=self.pool_max, timeout=self.connect_timeout,
                command_timeout=self.command_timeout, reset=_keep_session)
        except (*_ERRORS, ValueError) as exc:
            raise StoreError(f"cannot connect to PostgreSQL: {exc}") from exc

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            with contextlib.suppress(*_ERRORS):
                await asyncio.wait_for(pool.close(), 5)

    @contextlib.asynccontextmanager
    async def _conn(self, timeout: float | None = None):
        """A pooled connection, in turn (first come, first served). The wait is bounded by the caller's time
        budget (the gate runs every store call under one), not by a timer of its own: asyncpg's acquire timeout
        is a task and a timer per call. Calls outside a gate's budget (migrate, a job's lock) pass `timeout`."""
        if self._pool is None:
            raise StoreError("the store is not open")
        try:
            await (self._turns.acquire() if timeout is None else asyncio.wait_for(self._turns.acquire(), timeout))
        except asyncio.TimeoutError as exc:
            raise StoreError(f"PostgreSQL: no connection free within {timeout}s") from exc
        try:
            async with self._pool.acquire() as conn:
                yield conn
        except _ERRORS as exc:
            raise StoreError(f"PostgreSQL: {type(exc).__name__}: {exc}") from exc
        finally:
            self._turns.release()       # after the connection is back in the pool: the next turn finds it there

    @contextlib.asynccontextmanager
    async def _tx(self, timeout: float | None = None):
        async with self._conn(timeout) as conn:
            try:
                async with conn.transaction():
                    yield conn
            except _ERRORS as exc:
                raise StoreError(f"PostgreSQL: {type(exc).__name__}: {exc}") from exc

    async def migrate(self) -> tuple[int, int]:
        async with self._tx(self.connect_timeout) as db:
            await db.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await db.execute("CREATE TABLE IF NOT EXISTS plangate_schema (version INTEGER NOT NULL)")
            before = await db.fetchval("SELECT max(version) FROM plangate_schema") or 0
            version = before
            for number, _, sql in migrations("postgresql"):
                if number > version:
                    for statement in statements(sql):
                        await db.execute(statement)
                    await db.execute("INSERT INTO plangate_schema (version) VALUES ($1)", number)
                    version = number
        return before, version

    async def ping(self) -> None:
        async with self._conn() as db:
            await db.fetchval("SELECT 1 FROM subscriptions LIMIT 1")

    # --- reads ---------------------------------------------------------------------------------

    async def load(self, subject: str) -> StoredSubject | None:
        async with self._conn() as db:
            row = await db.fetchrow(f"SELECT {_SUBJECT_COLUMNS} FROM subscriptions WHERE subject = $1", subject)
        return subject_from_row(row) if row else None

    async def used(self, subject: str, windows: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        if not windows:
            return {}
        async with self._conn() as db:
            rows = await db.fetch(
                "SELECT meter, window_start, used FROM quota_usage WHERE subject = $1 AND "
                "(meter, window_start) IN (SELECT * FROM unnest($2::text[], $3::bigint[]))",
                subject, [m for m, _ in windows], [s for _, s in windows])
        found = {(r[0], r[1]): r[2] for r in rows}
        return {w: found.get(w, 0) for w in windows}

    async def transitions(self, subject: str, limit: int = 20) -> list[AuditEntry]:
        async with self._conn() as db:
            rows = await db.fetch(
                "SELECT subject, from_status, to_status, trigger, reason, at, plan_version, cause_id, actor "
                "FROM transitions WHERE subject = $1 ORDER BY id DESC LIMIT $2", subject, limit)
        return [AuditEntry(*r) for r in rows]

    # --- counting ------------------------------------------------------------------------------

    async def count(self, current: StoredSubject, meter: str, window_start: int, amount: int,
                    limit: int | None, key: str | None, now: float) -> Counted:
        subject = current.state.subject
        args = (subject, meter, window_start, amount, limit, key, now)
        async with self._conn() as db:
            try:
                if current.version:
                    row = await db.fetchrow(_COUNT, *args, current.version)
                else:
                    row = await self._count_first(db, current, args)
            except _ERRORS as exc:
                raise StoreError(f"PostgreSQL: {type(exc).__name__}: {exc}") from exc
        outcome, used, *seen = row
        if outcome == "repeat":
            seen_subject, seen_meter, seen_amount = seen
            if (seen_subject, seen_meter, seen_amount) != (subject, meter, amount):
                raise IdempotencyConflict(
                    f"idempotency key {key!r} was first used for subject {seen_subject!r}, meter {seen_meter!r}, "
                    f"amount {seen_amount}; use a new key for different work")
            return Counted(True, used, duplicate=True)
        return Counted(outcome == "counted", used, conflict=outcome == "conflict")

    async def _insert_subject(self, db, current: StoredSubject, now: float) -> None:
        await db.execute(_INSERT_SUBJECT + " ON CONFLICT (subject) DO NOTHING", current.state.subject,
                         *subject_values(current), now)

    async def _count_first(self, db, current: StoredSubject, args: tuple):
        """plangate_count's row for a subject not stored yet: its row goes in with the count (as version 1,
        unless another writer's is there), or not at all."""
        try:
            async with db.transaction():
                await db.execute(_INSERT_SUBJECT + " ON CONFLICT (subject) DO NOTHING", current.state.subject,
                                 *subject_values(current), args[-1])
                row = await db.fetchrow(_COUNT, *args, 1)
                if row[0] != "counted":
                    raise _Abort(row)
        except _Abort as abort:         # rolled back: a refused first count stores nothing
            return abort.row
        return row

    # --- state changes -------------------------------------------------------------------------

    async def commit(self, change: Change) -> bool:
        new, s = change.subject, change.subject.state
        async with self._conn() as db:
            try:
                async with db.transaction():
                    if change.expected_version == 0:
                        inserted = await db.fetchval(_INSERT_SUBJECT + " ON CONFLICT (subject) DO NOTHING RETURNING 1",
                                                     s.subject, *subject_values(new), now_of(change))
                        if not inserted:
                            return False
                    else:
                        done = await db.fetchval(_UPDATE_SUBJECT, *subject_values(new), now_of(change), s.subject,
                                                 change.expected_version)
                        if not done:
                            return False
                    await self._audit(db, change.audits)
                    for event in change.new_events:
                        if not await self._insert_event(db, event):
                            raise DuplicateEvent(event.id)
                    for e in change.replayed_events:
                        await db.execute(
                            "UPDATE subscription_events SET subject = $1, outcome = $2, reason = $3, state_before = $4 "
                            "WHERE event_id = $5", e.subject, e.outcome, e.reason, state_json(e.state_before), e.id)
                    await self._upsert_payments(db, change.payments)
                    if change.links:
                        await db.execute("INSERT INTO stripe_links (stripe_id, subject) SELECT unnest($1::text[]), $2 "
                                         "ON CONFLICT (stripe_id) DO NOTHING", list(change.links), s.subject)
                    if change.grants:
                        await db.executemany(_INSERT_GRANT, [grant_values(s.subject, g, "stripe")
                                                             for g in change.grants])
                    await db.execute("SELECT pg_notify($1, $2)", CHANNEL, s.subject)
            except _ERRORS as exc:
                raise StoreError(f"PostgreSQL: {type(exc).__name__}: {exc}") from exc
        return True

    async def commit_batch(self, changes: list[Change]) -> set[str]:
        if not changes:
            return set()
        if any(c.expected_version == 0 or c.new_events or c.replayed_events or c.payments for c in changes):
            raise ValueError("commit_batch takes changes of stored subjects with audits only")
        cols = list(zip(*[(c.subject.state.subject, c.expected_version, *subject_values(c.subject))
                          for c in changes]))
        async with self._tx() as db:
            rows = await db.fetch(_BATCH_UPDATE, *cols)
            done = {r[0] for r in rows}
            await self._audit(db, [a for c in changes if c.subject.state.subject in done for a in c.audits])
            for subject in done:
                await db.execute("SELECT pg_notify($1, $2)", CHANNEL, subject)
        return done

    async def record_event(self, event: EventRecord, payments: tuple[Payment, ...] = ()) -> bool:
        async with self._tx() as db:
            if not await self._insert_event(db, event):
                return False
            await self._upsert_payments(db, payments)
        return True

    async def _audit(self, db, audits) -> None:
        if audits:
            await db.executemany(
                "INSERT INTO transitions (subject, from_status, to_status, trigger, cause_id, reason, actor, at, "
                "plan_version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                [(a.subject, a.from_status, a.to_status, a.trigger, a.cause_id, a.reason, a.actor, a.at,
                  a.plan_version) for a in audits])

    async def _insert_event(self, db, e: EventRecord) -> bool:
        return bool(await db.fetchval(
            f"INSERT INTO subscription_events ({_EVENT_COLUMNS}, received_at) VALUES "
            "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT (event_id) DO NOTHING RETURNING 1",
            e.id, e.type, e.created, e.payload, e.outcome, e.reason, e.subject, e.stripe_customer,
            e.stripe_subscription, state_json(e.state_before), e.stripe_payment, time.time()))

    async def _upsert_payments(self, db, payments) -> None:
        for p in payments:
            await db.execute(
                "INSERT INTO payments (invoice_id, subject, stripe_customer, stripe_subscription, status, amount, "
                "currency, event_id, created, updated_created) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) "
                "ON CONFLICT (invoice_id) DO UPDATE SET status = EXCLUDED.status, amount = EXCLUDED.amount, "
                "subject = COALESCE(EXCLUDED.subject, payments.subject), event_id = EXCLUDED.event_id, "
                "updated_created = EXCLUDED.updated_created "
                "WHERE EXCLUDED.updated_created >= payments.updated_created",
                p.invoice_id, p.subject, p.stripe_customer, p.stripe_subscription, p.status, p.amount, p.currency,
                p.event_id, p.created)

    # --- lookups for webhooks and jobs -----------------------------------------------------------

    async def event_seen(self, event_id: str) -> bool:
        async with self._conn() as db:
            return bool(await db.fetchval("SELECT 1 FROM subscription_events WHERE event_id = $1", event_id))

    async def find_subject(self, customer: str | None, subscription: str | None,
                           payments: tuple[str, ...] = ()) -> str | None:
        if not (customer or subscription or payments):
            return None
        async with self._conn() as db:
            return await db.fetchval(_FIND, subscription, customer, list(payments))

    async def history(self, subject: str, since: float) -> list[EventRecord]:
        async with self._conn() as db:
            rows = await db.fetch(f"SELECT {_EVENT_COLUMNS} FROM subscription_events WHERE subject = $1 AND "
                                  "created >= $2 AND outcome <> 'pending' ORDER BY created, event_id", subject, since)
        return [event_from_row(r) for r in rows]

    async def pending(self, customer: str | None, subscription: str | None,
                      payments: tuple[str, ...] = ()) -> list[EventRecord]:
        async with self._conn() as db:
            rows = await db.fetch(
                f"SELECT {_EVENT_COLUMNS} FROM subscription_events WHERE outcome = 'pending' AND "
                "((stripe_customer IS NOT NULL AND stripe_customer = $1) OR "
                "(stripe_subscription IS NOT NULL AND stripe_subscription = $2) OR "
                "(stripe_payment IS NOT NULL AND stripe_payment = ANY($3::text[]))) ORDER BY created, event_id",
                customer, subscription, list(payments))
        return [event_from_row(r) for r in rows]

    async def last_admin_change(self, subject: str) -> float | None:
        async with self._conn() as db:
            return await db.fetchval("SELECT max(at) FROM transitions WHERE subject = $1 AND trigger LIKE 'admin:%'",
                                     subject)

    async def due(self, now: float, limit: int, skip: tuple[str, ...] = ()) -> list[StoredSubject]:
        async with self._conn() as db:
            if skip:
                rows = await db.fetch(f"SELECT {_SUBJECT_COLUMNS} FROM subscriptions WHERE timer_due <= $1 AND "
                                      "NOT subject = ANY($3::text[]) ORDER BY timer_due LIMIT $2", now, limit, list(skip))
            else:
                rows = await db.fetch(f"SELECT {_SUBJECT_COLUMNS} FROM subscriptions WHERE timer_due <= $1 "
                                      "ORDER BY timer_due LIMIT $2", now, limit)
        return [subject_from_row(r) for r in rows]

    async def doubtful(self, statuses: tuple[str, ...], unconfirmed_before: float, limit: int) -> list[StoredSubject]:
        async with self._conn() as db:
            rows = await db.fetch(
                f"SELECT {_SUBJECT_COLUMNS} FROM subscriptions WHERE stripe_subscription IS NOT NULL AND "
                "(status = ANY($1::text[]) OR coalesce(confirmed_at, 0) < $2) ORDER BY coalesce(confirmed_at, 0) "
                "LIMIT $3", list(statuses), unconfirmed_before, limit)
        return [subject_from_row(r) for r in rows]

    async def cleanup(self, usage_before: int, keys_before: float) -> tuple[int, int]:
        async with self._tx() as db:
            usage = await db.execute("DELETE FROM quota_usage WHERE window_start > 0 AND window_start < $1",
                                     usage_before)
            keys = await db.execute("DELETE FROM usage_keys WHERE created_at < $1", keys_before)
        return int(usage.split()[-1]), int(keys.split()[-1])

    async def events(self, subject: str, limit: int = 20) -> list[EventRecord]:
        async with self._conn() as db:
            rows = await db.fetch(f"SELECT {_EVENT_COLUMNS} FROM subscription_events WHERE subject = $1 "
                                  "ORDER BY created DESC, event_id DESC LIMIT $2", subject, limit)
        return [event_from_row(r) for r in rows]

    def listen(self, on_subject, on_reset, on_plan=None) -> None:
        self._listener = Listener(self.dsn, on_subject, on_reset, connect_timeout=self.connect_timeout,
                                  on_plan=on_plan)
        self._listener.start()

    async def unlisten(self) -> None:
        if getattr(self, "_listener", None) is not None:
            await self._listener.stop()
            self._listener = None

    @contextlib.asynccontextmanager
    async def exclusive(self, job: str):
        """Hold a job's advisory lock for the block; yields False when another node holds it."""
        key = _JOB_LOCK_BASE + sum(job.encode())
        async with self._conn(self.connect_timeout) as db:
            got = await db.fetchval("SELECT pg_try_advisory_lock($1)", key)
            try:
                yield bool(got)
            finally:
                if got:
                    try:
                        await db.execute("SELECT pg_advisory_unlock($1)", key)
                    except BaseException as exc:    # failed or cancelled: the session ends, and its lock with it
                        db.terminate()              # (the pool's release unlocks nothing: _keep_session)
                        if not isinstance(exc, _ERRORS):
                            raise


async def _keep_session(conn) -> None:
    """The pool's reset of a released connection: none. asyncpg's default sends one more query on every release
    (unlock every advisory lock, close cursors, unlisten, reset settings): a round trip for each store call.
    Our sessions change none of that: no SET, no cursor, LISTEN only on the Listener's own connection, and the
    one session lock (exclusive) is released by its holder, or its connection closed. asyncpg still rolls back
    a transaction left open."""


class _Abort(Exception):
    """Leave a transaction by rolling it back, with plangate_count's row to answer with."""

    def __init__(self, row):
        self.row = row


class Listener:
    """Keeps one connection LISTENing on the invalidation channel (and, with on_plan, on the plan channel).
    When it is lost, every cached subject may be stale: on_reset drops them all, then the listener reconnects
    (with a growing pause); on_plan(None) then asks whether a plan was deployed meanwhile."""

    def __init__(self, dsn: str, on_subject, on_reset, *, connect_timeout: float = 5.0, on_plan=None):
        self.dsn, self.on_subject, self.on_reset, self.on_plan = dsn, on_subject, on_reset, on_plan
        self.connect_timeout = connect_timeout
        self.connected = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        pause = 0.1
        while True:
            lost = asyncio.Event()
            conn = None
            try:
                conn = await asyncpg.connect(self.dsn, timeout=self.connect_timeout)
                conn.add_termination_listener(lambda _: lost.set())
                await conn.add_listener(CHANNEL, lambda _c, _pid, _ch, subject: self.on_subject(subject))
                if self.on_plan is not None:
                    await conn.add_listener(PLAN_CHANNEL, lambda _c, _pid, _ch, version: self.on_plan(version))
                self.on_reset()            # whatever changed while we were not listening
                if self.on_plan is not None:
                    self.on_plan(None)
                self.connected.set()
                pause = 0.1
                while not lost.is_set():
                    try:
                        await asyncio.wait_for(lost.wait(), 1.0)
                    except asyncio.TimeoutError:
                        await conn.execute("SELECT 1")      # notices a dead connection promptly
            except asyncio.CancelledError:
                raise
            except _ERRORS:
                pass
            finally:
                self.connected.clear()
                if conn is not None:
                    with contextlib.suppress(*_ERRORS, asyncio.CancelledError):
                        conn.terminate()
            self.on_reset()
            await asyncio.sleep(pause)
            pause = min(pause * 2, 5.0)
