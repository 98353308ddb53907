"""The shared store: PostgreSQL through an asyncpg pool, for several gate nodes.

Counting is an INSERT ... ON CONFLICT ... DO UPDATE ... WHERE ... RETURNING per count, run for every count a
node has waiting in one call of plangate_count_batch (one round trip, one commit); subject loads and writes
that arrive together go together too (_batches.Batches). A committed state change NOTIFYs the other nodes
(channel plangate_subjects, payload: the subject) so they drop it from their caches; a committed count is
announced on plangate_usage so they keep its usage current. Reads of subjects may go to streaming replicas
(_pg_pool.Replicas).
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any
from collections.abc import Awaitable

import asyncpg

from ._batches import Batches
from ._pg_listener import CHANNEL, Listener
from ._pg_pool import ERRORS as _ERRORS, Pool, Replicas
from ._base import (AuditEntry, Change, Counted, DuplicateEvent, EventRecord, IdempotencyConflict, Payment, Store,
                    StoreError, StoredSubject, UsageCeiling, state_json)
from ._migrations import migrations, statements
from ._credits import grant_values
from ._postgres_credits import _INSERT_GRANT, PostgresCredits
from ._postgres_personal import PostgresPersonalData
from ._postgres_plans import PostgresPlans
from ._console_sessions import PostgresConsoleSessions
from ._rows import (EVENT_COLUMNS, SUBJECT_COLUMNS, WRITTEN, event_from_row, event_log_sql, now_of,
                    pending_linked_sql, subject_from_row, subject_values)

_MIGRATION_LOCK = 0x706C_6731     # advisory lock ids: one node migrates at a time
_JOB_LOCK_BASE = 0x706C_6800
_SUBJECT_COLUMNS = SUBJECT_COLUMNS
_EVENT_COLUMNS = EVENT_COLUMNS
_INSERT_SUBJECT = (f"INSERT INTO subscriptions (subject, {', '.join(WRITTEN)}, version, updated_at) VALUES "
                   f"($1, {', '.join(f'${i}' for i in range(2, len(WRITTEN) + 2))}, 1, ${len(WRITTEN) + 2})")
_UPDATE_SUBJECT = (f"UPDATE subscriptions SET {', '.join(f'{c} = ${i}' for i, c in enumerate(WRITTEN, 1))}, "
                   f"version = version + 1, updated_at = ${len(WRITTEN) + 1} "
                   f"WHERE subject = ${len(WRITTEN) + 2} AND version = ${len(WRITTEN) + 3} RETURNING 1")
# Counts in one round trip (migration 10): one array per argument of Store.count, one element per count.
_COUNT_BATCH = ("SELECT * FROM plangate_count_batch($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[], "
                "$6::text[], $7::bigint[], $8::float8[], $9)")
# Batches of counts (of subject loads, of writes) per node: one in flight, and what arrives meanwhile waits and
# goes in the next one (its round trip and commit is the next batch's time to fill up; with two always in
# flight, batches came out about half as large and PostgreSQL spent more CPU a count, on two cores). Only when
# the one in flight has taken STALLED_AFTER does another go beside it, up to BATCHES_IN_FLIGHT: on a busy
# machine one descheduled backend held every consume of the node (a run at 1,019 req/s against the floor's
# 3,573; with a second batch after 3 ms, 2,904 and 6,267 against 3,822 and 4,109 in the same minutes).
BATCHES_IN_FLIGHT = 3
STALLED_AFTER = 0.003
# The stored events a fold rewrites, locked in one order: whose each is now (see _write).
_REPLAYED = ("SELECT subject, outcome FROM subscription_events WHERE event_id = ANY($1::text[]) ORDER BY event_id "
             "FOR UPDATE")
DEADLOCK_RETRIES = 3
NO_VERSION = -1     # a version no row has: a count against it is a conflict (after its key is looked up)
_TYPES = {"status": "text", "tier": "text", "plan_version": "text", "stripe_customer": "text",
          "stripe_subscription": "text", "fold_state": "text", "stripe_subscriptions": "text", "quantity": "int8",
          "addons": "text", "traits": "text"}   # others: float8
# The subject a Stripe id leads to: the row's own subscription, a link of its events to another subscription it
# holds or held, a link to a charge or payment intent (a payment is its buyer's, wherever its customer went since),
# its customer (when no other subject holds it too), in that order of preference.
_FIND = ("SELECT subject FROM (SELECT subject, 0 AS rank FROM subscriptions WHERE stripe_subscription = $1 "
         "UNION ALL SELECT subject, 1 FROM stripe_links WHERE stripe_id = $1 "
         "UNION ALL SELECT subject, 1 + array_position($3::text[], stripe_id) FROM stripe_links "
         "WHERE stripe_id = ANY($3::text[]) "
         "UNION ALL SELECT min(subject), 2 + cardinality($3::text[]) FROM subscriptions WHERE stripe_customer = $2 "
         "HAVING count(*) = 1) AS found ORDER BY rank LIMIT 1")
_BATCH_UPDATE = (
    f"UPDATE subscriptions SET {', '.join(f'{c} = v.{c}' for c in WRITTEN)}, version = subscriptions.version + 1, "
    "updated_at = v.since FROM unnest($1::text[], $2::bigint[], "
    + ", ".join(f"${i}::{_TYPES.get(c, 'float8')}[]" for i, c in enumerate(WRITTEN, 3))
    + f") AS v (subject, expected, {', '.join(WRITTEN)}) "
    "WHERE subscriptions.subject = v.subject AND subscriptions.version = v.expected RETURNING subscriptions.subject")


class PostgresStore(PostgresCredits, PostgresPersonalData, PostgresPlans, PostgresConsoleSessions, Store):
    channel = CHANNEL
    caches_grants = False     # other nodes spend credits too, and tell no node: grants are read when needed

    @property
    def caches_usage(self) -> bool:  # type: ignore[override]  # a property where the base has a constant
        """Other nodes count too: a cached usage is current only while every count reaches this node (the
        listener hears plangate_usage); otherwise usage is read from the database on every check."""
        listener = getattr(self, "_listener", None)
        return listener is not None and listener.hears_usage and listener.connected.is_set()

    def __init__(self, dsn: str, *, pool_min: int = 1, pool_max: int = 10, connect_timeout: float = 5.0,
                 command_timeout: float = 10.0, replicas: tuple[str, ...] = (), replica_max_lag: float = 1.0,
                 push_usage: bool = True):
        self.dsn = dsn
        self.pool_min, self.pool_max = pool_min, pool_max
        self.connect_timeout, self.command_timeout = connect_timeout, command_timeout
        options: dict[str, Any] = {"min_size": pool_min, "max_size": pool_max, "connect_timeout": connect_timeout,
                   "command_timeout": command_timeout, "reset": _keep_session, "init": self._watch}
        self._primary = Pool(dsn, **options)
        # Reads of subjects (checks, GET /v1/subjects) may go to streaming replicas; see _pg_pool.Replicas.
        self.replicas = Replicas(self._primary, [Pool(r, **{**options, "init": self._watch_replica})
                                                 for r in replicas], replica_max_lag) if replicas else None
        self._counts = Batches(self._count_batch, BATCHES_IN_FLIGHT, STALLED_AFTER)
        self._loads = Batches(self._load_batch, BATCHES_IN_FLIGHT, STALLED_AFTER)
        self._writes = Batches(self._write_batch, BATCHES_IN_FLIGHT, STALLED_AFTER)
        self._listener: Listener | None = None
        self.query_logger = None      # a callable given every statement this store sends (set before open())
        self.batches_retried = 0      # batches chosen as a deadlock's victim and run again
        # Each count NOTIFYs plangate_usage, so that every node's checks answer from usage it holds. It costs the
        # database a transaction per node per batch to deliver (bench/README.md has the figures).
        self.announce_usage = push_usage
        self._backends: set[int] = set()    # server PIDs of this store's pooled connections

    # --- life cycle ----------------------------------------------------------------------------

    async def open(self) -> None:
        await self._primary.open()
        if self.replicas is not None:
            try:
                for pool in self.replicas.pools:
                    # A replica down at start: reads go to the primary (its pool opens lazily).
                    with contextlib.suppress(StoreError):
                        await pool.open()
            except BaseException:
                # Stopped while a replica did not answer (up to PLANGATE_PG_CONNECT_TIMEOUT each): nothing stays open.
                for pool in (*self.replicas.pools, self._primary):
                    await pool.close()
                raise
            self.replicas.start()

    async def _watch_replica(self, conn) -> None:
        """A new pooled connection to a replica: every statement it sends goes to query_logger, when one is set
        (before open(); asyncpg's own hook, a LoggedQuery per statement)."""
        if self.query_logger is not None:
            conn.add_query_logger(self.query_logger)

    async def _watch(self, conn) -> None:
        """A new pooled connection to the primary: watched as a replica's, and its server PID known while it
        lives (the usage notifications of its counts are this node's own)."""
        await self._watch_replica(conn)
        pid = conn.get_server_pid()
        self._backends.add(pid)
        conn.add_termination_listener(lambda _conn: self._backends.discard(pid))

    async def close(self) -> None:
        await self._counts.drain(5.0)
        await self._loads.drain(1.0)
        await self._writes.drain(5.0)
        if self.replicas is not None:
            await self.replicas.stop()
            for pool in self.replicas.pools:
                await pool.close()
        await self._primary.close()

    def replica_lags(self) -> dict[str, float]:
        if self.replicas is None:
            return {}
        return {pool.dsn.split("@")[-1].split("/")[0]: lag
                for pool, lag in zip(self.replicas.pools, self.replicas.lag)}

    def _conn(self, timeout: float | None = None):
        """A connection to the primary, in turn (Pool.conn)."""
        return self._primary.conn(timeout)

    def _reader(self, *subjects: str):
        """A connection for reading these subjects: a replica that is current enough, else the primary."""
        return (self.replicas.reader(subjects) if self.replicas is not None else self._primary).conn()

    def _changed(self, *subjects: str) -> None:
        """This node wrote these subjects, or tried to on a version it read (maybe from a replica): until a
        replica is confirmed past now, they are read from the primary."""
        if self.replicas is not None:
            for subject in subjects:
                self.replicas.touched(subject)

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
        if version != before and self.replicas is not None:
            self.replicas.forget()          # no replica is read before it has the new schema
        return before, version

    async def ping(self) -> None:
        async with self._conn() as db:
            await db.fetchval("SELECT 1 FROM subscriptions LIMIT 1")

    # --- reads ---------------------------------------------------------------------------------

    async def load(self, subject: str) -> StoredSubject | None:
        return await self._loads.submit(subject)

    async def _load_batch(self, subjects: list[str]) -> list[StoredSubject | None]:
        """The rows of subjects asked for together (cache misses under load), in one query."""
        async with self._reader(*subjects) as db:
            rows = await db.fetch(f"SELECT {_SUBJECT_COLUMNS} FROM subscriptions WHERE subject = ANY($1::text[])",
                                  list(set(subjects)))
        found = {row[0]: subject_from_row(row) for row in rows}
        return [found.get(subject) for subject in subjects]

    async def load_many(self, subjects: list[str], windows: list[tuple[str, str, int]]) \
            -> tuple[list[StoredSubject | None], dict[tuple[str, str, int], int]]:
        usage = dict.fromkeys(windows, 0)
        async with self._reader(*subjects) as db:
            rows = await db.fetch(f"SELECT {_SUBJECT_COLUMNS} FROM subscriptions WHERE subject = ANY($1::text[])",
                                  subjects)
            if windows:
                for r in await db.fetch(
                        "SELECT q.subject, q.meter, q.window_start, q.used FROM quota_usage AS q JOIN "
                        "unnest($1::text[], $2::text[], $3::bigint[]) AS w(subject, meter, window_start) ON "
                        "q.subject = w.subject AND q.meter = w.meter AND q.window_start = w.window_start "
                        "WHERE q.subject = ANY($1::text[])",
                        [w[0] for w in windows], [w[1] for w in windows], [w[2] for w in windows]):
                    usage[(r[0], r[1], r[2])] = r[3]
        found = {row[0]: subject_from_row(row) for row in rows}
        return [found.get(subject) for subject in subjects], usage

    async def used(self, subject: str, windows: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        if not windows:
            return {}
        async with self._reader(subject) as db:
            rows = await db.fetch(
                "SELECT meter, window_start, used FROM quota_usage WHERE subject = $1 AND "
                "(meter, window_start) IN (SELECT * FROM unnest($2::text[], $3::bigint[]))",
                subject, [m for m, _ in windows], [s for _, s in windows])
        found = {(r[0], r[1]): r[2] for r in rows}
        return {w: found.get(w, 0) for w in windows}

    async def billed(self, subject: str, window: tuple[str, int]) -> int:
        async with self._reader(subject) as db:
            found = await db.fetchval("SELECT billed FROM quota_usage WHERE subject = $1 AND meter = $2 AND "
                                      "window_start = $3", subject, *window)
        return found or 0

    async def transitions(self, subject: str, limit: int = 20) -> list[AuditEntry]:
        async with self._reader(subject) as db:
            rows = await db.fetch(
                "SELECT subject, from_status, to_status, trigger, reason, at, plan_version, cause_id, actor "
                "FROM transitions WHERE subject = $1 ORDER BY id DESC LIMIT $2", subject, limit)
        return [AuditEntry(*r) for r in rows]

    # --- counting ------------------------------------------------------------------------------

    def count(self, current: StoredSubject, meter: str, window_start: int, amount: int,
              limit: int | None, key: str | None, now: float) -> Awaitable[Counted]:
        """Store.count, as a future of the batch the count joins (no task of its own: the gate shields it)."""
        item = (current.state.subject, meter, window_start, amount, limit, key, current.version, now)
        if current.version:
            return self._counts.submit(item)
        return asyncio.ensure_future(self._count_first(current, item))

    def withdraw(self, pending: asyncio.Future) -> bool:
        # A count or commit waiting for its batch is left out; one whose batch was sent stands. A first count, a
        # spend or a grant (a task with a transaction of its own) is withdrawn while it waits for a connection,
        # and stands once it has one (a batch's future is no task: the batch decides).
        if self._counts.withdraw(pending) or self._writes.withdraw(pending):
            return True
        return isinstance(pending, asyncio.Task) and pending not in self._primary.handed and pending.cancel()

    def _counted(self, item: tuple, row) -> Counted | Exception:
        """What plangate_count_batch's row says of one count (an IdempotencyConflict or a UsageCeiling for that
        count alone)."""
        if isinstance(row, Exception):
            return row
        subject, meter, _, amount, _, key = item[:6]
        outcome, used, *seen = row
        if outcome == "repeat":
            if tuple(seen) != (subject, meter, amount):
                return IdempotencyConflict(
                    f"idempotency key {key!r} was first used for subject {seen[0]!r}, meter {seen[1]!r}, "
                    f"amount {seen[2]}; use a new key for different work")
            return Counted(True, used, duplicate=True)
        if outcome == "ceiling":        # nothing written (migration usage_ceiling)
            return UsageCeiling(used, amount)
        if outcome != "refused":
            self._changed(subject)
        return Counted(outcome == "counted", used, conflict=outcome == "conflict")

    async def _insert_subject(self, db, current: StoredSubject, now: float) -> int:
        """A subject not stored yet, in its initial state: the version to count against, 1; or, when another
        writer's row is there (it stays), NO_VERSION, so that the count is a conflict (the gate decides again on
        that row) unless its key is a repeat."""
        status = await db.execute(_INSERT_SUBJECT + " ON CONFLICT (subject) DO NOTHING", current.state.subject,
                                  *subject_values(current), now)
        return 1 if status.endswith(" 1") else NO_VERSION

    async def _count_batch(self, items: list[tuple]) -> list:
        """plangate_count_batch's row for each count, in one call (one round trip, one commit). The counts run
        sorted by (subject, meter, window) so that every batch of every node takes its row locks in one order;
        a batch chosen as a deadlock's victim anyway (locks taken by the sweep or a state change) runs again.
        A statement that fails for one count's values fails the call: the counts then run one call each, so
        that the failure is that count's alone."""
        order = sorted(range(len(items)), key=lambda i: items[i][:3])
        ordered = [items[i] for i in order]
        rows: list[Any] = [None] * len(items)
        async with self._conn() as db:
            for attempt in range(DEADLOCK_RETRIES + 1):
                try:
                    found = await db.fetch(_COUNT_BATCH, *_columns(ordered), self.announce_usage)
                    break
                except asyncpg.TransactionRollbackError:
                    self.batches_retried += 1
                    if attempt == DEADLOCK_RETRIES:
                        raise
                except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
                    if len(items) == 1:
                        raise StoreError(f"PostgreSQL: {type(exc).__name__}: {exc}") from exc
                    found = [await self._count_alone(db, item) for item in ordered]
                    break
        for i, row in zip(order, found):
            rows[i] = self._counted(items[i], row)
        return rows

    async def _count_alone(self, db, item: tuple):
        """One count in a call of its own; its failure as a StoreError (for its caller alone)."""
        try:
            return (await db.fetch(_COUNT_BATCH, *_columns([item]), self.announce_usage))[0]
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
            return StoreError(f"PostgreSQL: {type(exc).__name__}: {exc}")

    async def _count_first(self, current: StoredSubject, item: tuple):
        """A count for a subject not stored yet: its row goes in with the count (as version 1; when another
        writer's is there, a conflict), or not at all. Not batched: a subject's first count happens once."""
        async with self._conn() as db:
            try:
                async with db.transaction():
                    item = (*item[:6], await self._insert_subject(db, current, item[-1]), item[7])
                    row = (await db.fetch(_COUNT_BATCH, *_columns([item]), self.announce_usage))[0]
                    if row[0] != "counted":
                        raise _Abort(row)
            except _Abort as abort:         # rolled back: a refused first count stores nothing
                row = abort.row
            except _ERRORS as exc:
                raise StoreError(f"PostgreSQL: {type(exc).__name__}: {exc}") from exc
        counted = self._counted(item, row)
        if isinstance(counted, Exception):
            raise counted
        return counted

    # --- state changes -------------------------------------------------------------------------

    def commit(self, change: Change) -> Awaitable[bool]:
        """Store.commit, in the next batch of writes (see _write_batch)."""
        return self._writes.submit(change)

    def record_event(self, event: EventRecord, payments: tuple[Payment, ...] = ()) -> Awaitable[bool]:
        """Store.record_event, in the next batch of writes (see _write_batch)."""
        return self._writes.submit((event, payments))

    async def _write_batch(self, writes: list) -> list:
        """State changes and events arriving together, committed in one transaction: one commit (one WAL flush)
        for many webhooks. None rolls another back: a write first inserts its new events (a stored id is a
        repeat delivery), then its subject's row (the expected version, or no row yet), and when either fails it
        deletes the events it inserted and writes nothing more. Writes go in subject order, as counts do, so
        batches of nodes never wait for each other both ways; a statement that fails outright fails the
        transaction: then each write runs in a transaction of its own, so that the failure is its alone."""
        order = sorted(range(len(writes)), key=lambda i: _write_subject(writes[i]) or "")
        results = [None] * len(writes)
        for attempt in range(DEADLOCK_RETRIES + 1):
            try:
                async with self._tx() as db:
                    for i in order:
                        results[i] = await self._write(db, writes[i])
                break
            except StoreError as exc:
                cause = exc.__cause__
                if isinstance(cause, asyncpg.TransactionRollbackError) and attempt < DEADLOCK_RETRIES:
                    self.batches_retried += 1
                    continue
                # Only a statement's failure is one write's fault; a lost connection or a timeout fails them all.
                if len(writes) == 1 or not isinstance(cause, asyncpg.PostgresError) or \
                        isinstance(cause, (asyncpg.PostgresConnectionError, asyncpg.QueryCanceledError)):
                    raise
                results = [await self._write_alone(write) for write in writes]
                break
        return results

    async def _write_alone(self, write):
        try:
            async with self._tx() as db:
                return await self._write(db, write)
        except StoreError as exc:
            return exc

    async def _write(self, db, write):
        """One write of a batch: True, False (a stale version, or an event stored already: nothing written), or
        DuplicateEvent (a change's new event stored already: nothing written)."""
        if isinstance(write, tuple):
            event, payments = write
            if not await self._insert_event(db, event):
                return False
            await self._upsert_payments(db, payments)
            return True
        change = write
        new, s = change.subject, change.subject.state
        self._changed(s.subject)        # written, or decided on a row that was stale: the primary has it now
        if change.replayed_events:
            # Locked before anything is written: another subject's fold that took one of them meanwhile (two
            # adoptions reaching one waiting event through different Stripe ids) has committed when this reads it.
            rows = await db.fetch(_REPLAYED, [e.id for e in change.replayed_events])
            if any(outcome != "pending" and subject not in (None, s.subject) for subject, outcome in rows):
                return False
        inserted: list[str] = []
        for event in change.new_events:
            if not await self._insert_event(db, event):
                await self._unwrite(db, inserted)
                return DuplicateEvent(event.id)
            inserted.append(event.id)
        if change.expected_version == 0:
            done = await db.fetchval(_INSERT_SUBJECT + " ON CONFLICT (subject) DO NOTHING RETURNING 1",
                                     s.subject, *subject_values(new), now_of(change))
        else:
            done = await db.fetchval(_UPDATE_SUBJECT, *subject_values(new), now_of(change), s.subject,
                                     change.expected_version)
        if not done:
            await self._unwrite(db, inserted)
            return False
        await self._audit(db, change.audits)
        for e in change.replayed_events:
            await db.execute(
                "UPDATE subscription_events SET subject = $1, outcome = $2, reason = $3, state_before = $4, "
                "fold_rank = $5 WHERE event_id = $6", e.subject, e.outcome, e.reason, state_json(e.state_before),
                e.fold_rank, e.id)
        await self._upsert_payments(db, change.payments)
        if change.links:
            await db.execute("INSERT INTO stripe_links (stripe_id, subject) SELECT unnest($1::text[]), $2 "
                             "ON CONFLICT (stripe_id) DO NOTHING", list(change.links), s.subject)
        if change.grants:
            await db.executemany(_INSERT_GRANT, [grant_values(s.subject, g, "stripe") for g in change.grants])
        if change.reversals or any(g.payment_intent for g in change.grants):
            await self.take_back(db, s.subject, change.reversals, change.grants)
        await db.execute("SELECT pg_notify($1, $2)", CHANNEL, s.subject)
        return True

    async def _unwrite(self, db, event_ids: list[str]) -> None:
        """Take back the events a write of this transaction inserted (it failed after them)."""
        if event_ids:
            await db.execute("DELETE FROM subscription_events WHERE event_id = ANY($1::text[])", event_ids)

    async def commit_batch(self, changes: list[Change]) -> set[str]:
        if not changes:
            return set()
        if any(c.expected_version == 0 or c.new_events or c.replayed_events or c.payments for c in changes):
            raise ValueError("commit_batch takes changes of stored subjects with audits only")
        cols = list(zip(*[(c.subject.state.subject, c.expected_version, *subject_values(c.subject))
                          for c in changes]))
        self._changed(*cols[0])
        async with self._tx() as db:
            # Rows locked in the order batches of counts take them (code point order: Python's sort, and
            # COLLATE "C" here), so that a sweep and a batch never wait for each other both ways.
            await db.execute('SELECT 1 FROM subscriptions WHERE subject = ANY($1::text[]) '
                             'ORDER BY subject COLLATE "C" FOR UPDATE', cols[0])
            rows = await db.fetch(_BATCH_UPDATE, *cols)
            done = {r[0] for r in rows}
            await self._audit(db, [a for c in changes if c.subject.state.subject in done for a in c.audits])
            for subject in done:
                await db.execute("SELECT pg_notify($1, $2)", CHANNEL, subject)
        return done

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
            "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) ON CONFLICT (event_id) DO NOTHING "
            "RETURNING 1",
            e.id, e.type, e.created, e.payload, e.outcome, e.reason, e.subject, e.stripe_customer,
            e.stripe_subscription, state_json(e.state_before), e.stripe_payment, e.fold_rank, e.stripe_payment_intent,
            time.time()))

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

    async def customer_shared(self, customer: str) -> bool:
        async with self._conn() as db:
            return await db.fetchval("SELECT count(*) > 1 FROM (SELECT 1 FROM subscriptions WHERE "
                                     "stripe_customer = $1 LIMIT 2) AS held", customer)

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
                "(stripe_payment IS NOT NULL AND stripe_payment = ANY($3::text[])) OR "
                "(stripe_payment_intent IS NOT NULL AND stripe_payment_intent = ANY($3::text[]))) "
                "ORDER BY created, event_id",
                customer, subscription, list(payments))
        return [event_from_row(r) for r in rows]

    async def pending_linked(self, after: tuple[float, str] | None, limit: int) -> list[EventRecord]:
        sql, args = pending_linked_sql(after, lambda n: f"${n}")
        args[-1] = limit
        async with self._conn() as db:
            return [event_from_row(r) for r in await db.fetch(sql, *args)]

    async def last_admin_change(self, subject: str) -> float | None:
        async with self._conn() as db:
            return await db.fetchval("SELECT max(at) FROM transitions WHERE subject = $1 AND trigger LIKE 'admin:%' "
                                     "AND NOT (trigger = 'admin:traits' AND from_status IS NOT DISTINCT FROM "
                                     "to_status)", subject)

    async def due(self, now: float, limit: int, skip: tuple[str, ...] = ()) -> list[StoredSubject]:
        async with self._conn() as db:
            if skip:
                rows = await db.fetch(f"SELECT {_SUBJECT_COLUMNS} FROM subscriptions WHERE timer_due <= $1 AND "
                                      "NOT subject = ANY($3::text[]) ORDER BY timer_due LIMIT $2",
                                      now, limit, list(skip))
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
            # The newest window of a subject's meter, and its current billing period's, are kept, however long ago
            # they began: they may still be counting (see _sqlite_queries.cleanup).
            usage = await db.execute("DELETE FROM quota_usage WHERE window_start > 0 AND window_start < $1 AND "
                                     "EXISTS (SELECT 1 FROM quota_usage AS n WHERE n.subject = quota_usage.subject "
                                     "AND n.meter = quota_usage.meter AND n.window_start > quota_usage.window_start) "
                                     "AND NOT EXISTS (SELECT 1 FROM subscriptions AS s WHERE "
                                     "s.subject = quota_usage.subject AND "
                                     "floor(s.period_start)::bigint = quota_usage.window_start)",
                                     usage_before)
            keys = await db.execute("DELETE FROM usage_keys WHERE created_at < $1", keys_before)
        return int(usage.split()[-1]), int(keys.split()[-1])

    async def events(self, subject: str, limit: int = 20) -> list[EventRecord]:
        async with self._reader(subject) as db:
            rows = await db.fetch(f"SELECT {_EVENT_COLUMNS} FROM subscription_events WHERE subject = $1 "
                                  "ORDER BY created DESC, event_id DESC LIMIT $2", subject, limit)
        return [event_from_row(r) for r in rows]

    async def event_log(self, outcome: str | None, type_: str | None, before: tuple[float, str] | None,
                        limit: int) -> list[EventRecord]:
        sql, args = event_log_sql(outcome, type_, before, lambda n: f"${n}")
        args[-1] = limit
        async with self._conn() as db:
            rows = await db.fetch(sql, *args)
        return [event_from_row(r) for r in rows]

    def listen(self, on_subject, on_reset, on_plan=None, on_usage=None) -> None:
        if self.replicas is not None:       # what another node changed is read from the primary for a while
            replicas = self.replicas

            def heard(subject: str, *_usage) -> None:
                replicas.touched(subject)

            on_subject, on_reset = _after(heard, on_subject), _after(replicas.forget, on_reset)
            on_usage = on_usage and _after(heard, on_usage)
        self._listener = Listener(self.dsn, on_subject, on_reset, on_usage if self.announce_usage else None,
                                  connect_timeout=self.connect_timeout, mine=self._backends, on_plan=on_plan)
        self._listener.start()

    async def listening(self) -> bool:
        listener: Listener | None = getattr(self, "_listener", None)
        if listener is None:
            return False
        try:
            await asyncio.wait_for(listener.connected.wait(), self.connect_timeout)
        except TimeoutError:
            return False
        return True

    async def unlisten(self) -> None:
        listener: Listener | None = getattr(self, "_listener", None)
        if listener is not None:
            await listener.stop()
            del self._listener

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


def _after(first, then):
    """A callback that calls first(*args), then then(*args)."""
    def both(*args) -> None:
        first(*args)
        then(*args)
    return both


def _write_subject(write) -> str | None:
    """The subject a write of _write_batch is about (an event's, or a change's)."""
    return write[0].subject if isinstance(write, tuple) else write.subject.state.subject


def _columns(counts: list[tuple]) -> list[list]:
    """Store.count's arguments of many counts as plangate_count_batch's arrays."""
    return [list(column) for column in zip(*counts)]


class _Abort(Exception):
    """Leave a transaction by rolling it back, with plangate_count_batch's row to answer with."""

    def __init__(self, row):
        self.row = row
