"""The SQLite store's SQL: each function is one read or one write's statements on a sqlite3 connection.

Where a function runs (the loop's connection or the writer's thread) and inside which transaction is the
store's business (_sqlite.py, _sqlite_transactions.py); these functions only say what to read and write.
"""
from __future__ import annotations

import functools
import json
import sqlite3
import time

from . import _credits as credits_sql
from ._base import AuditEntry, Change, Counted, DuplicateEvent, EventRecord, IdempotencyConflict, Payment, \
    StoredSubject, USAGE_CEILING, UsageCeiling, state_json
from ._migrations import migrations, statements
from ._rows import (EVENT_COLUMNS, STATE_COLUMNS, SUBJECT_COLUMNS, WRITTEN, event_from_row, event_log_sql, now_of,
                    pending_linked_sql, state_values, subject_from_row, subject_values)

_INSERT_SUBJECT = (f"INSERT INTO subscriptions (subject, {', '.join(WRITTEN)}, version, updated_at) "
                   f"VALUES (?, {', '.join('?' for _ in WRITTEN)}, 1, ?)")
# A subject's row is rewritten with only those of its indexed columns whose value changes: SQLite rewrites an
# index entry whenever its column is SET, even to the value it holds. Most webhook events leave the Stripe ids
# and the timer as they are, and writing them anyway tripled the pages a commit writes. The row's current
# values of those columns are read with the version check.
_INDEXED = ("timer_due", "stripe_customer", "stripe_subscription")
_INDEXED_AT = tuple(WRITTEN.index(c) for c in _INDEXED)
_CURRENT = ("SELECT timer_due, stripe_customer, stripe_subscription FROM subscriptions "
            "WHERE subject = ? AND version = ?")


@functools.lru_cache(maxsize=2 ** len(_INDEXED))
def _update_subject(changed: tuple[bool, ...]) -> tuple[str, tuple[int, ...]]:
    """(the UPDATE of a subject's row, the positions in subject_values() of the values it sets) when the
    indexed columns change as `changed` says."""
    skipped = {c for c, moved in zip(_INDEXED, changed) if not moved}
    positions = tuple(i for i, c in enumerate(WRITTEN) if c not in skipped)
    sets = ", ".join(WRITTEN[i] + " = ?" for i in positions)
    return (f"UPDATE subscriptions SET {sets}, version = version + 1, updated_at = ? WHERE subject = ? AND version = ?",
            positions)


# What commit_batch (timers) writes: the engine's state (state_values), then updated_at, and the row's key and
# expected version.
_BATCH_UPDATE = (f"UPDATE subscriptions SET {', '.join(c + ' = ?' for c in STATE_COLUMNS[1:])}, "
                 "version = version + 1, updated_at = ? WHERE subject = ? AND version = ?")
# A window's count grows in the database, and only while it stays within the limit (NULL: no limit) and the
# ceiling (USAGE_CEILING less the amount). Then read back: an UPDATE and a SELECT cost less than one upsert with
# RETURNING. The usage is compared with the bound less the amount, not added to first: a sum past 2**63 - 1 is a
# float in SQLite.
_ADD_USAGE = ("UPDATE quota_usage SET used = used + ? WHERE subject = ? AND meter = ? AND window_start = ? "
              "AND used <= ? AND (? IS NULL OR used <= ? - ?)")
_USED = "SELECT used FROM quota_usage WHERE subject = ? AND meter = ? AND window_start = ?"
# Events waiting for their subject, by customer or subscription: a search in each partial index (the second
# leaves out what the first found). `customer = ? OR subscription = ?` scanned every pending event instead,
# reading each one's row, and every linking event asks.
# Named parameters with a dict: numbered ones (?1) bound from a sequence are deprecated since Python 3.12.
_PENDING = (f"SELECT {EVENT_COLUMNS} FROM subscription_events WHERE outcome = 'pending' AND "
            f"stripe_customer = :customer UNION ALL SELECT {EVENT_COLUMNS} FROM subscription_events WHERE "
            "outcome = 'pending' AND stripe_subscription = :subscription AND (stripe_customer = :customer) IS NOT 1")
# Events waiting for a charge or payment intent (a dispute names both), that neither of the above found: by the
# one in stripe_payment, then by the payment intent beside it.
_OTHERS = "AND (stripe_customer = :customer) IS NOT 1 AND (stripe_subscription = :subscription) IS NOT 1"
_PENDING_PAYMENT = (f"SELECT {EVENT_COLUMNS} FROM subscription_events WHERE outcome = 'pending' AND "
                    f"stripe_payment = :payment {_OTHERS} UNION ALL SELECT {EVENT_COLUMNS} FROM subscription_events "
                    f"WHERE outcome = 'pending' AND stripe_payment_intent = :payment AND "
                    f"(stripe_payment = :payment) IS NOT 1 {_OTHERS}")
_LINKED = "SELECT subject FROM stripe_links WHERE stripe_id = ?"
_LINK = "INSERT OR IGNORE INTO stripe_links (stripe_id, subject) VALUES (?, ?)"
_INSERT_EVENT = (f"INSERT INTO subscription_events ({EVENT_COLUMNS}, received_at) "
                 f"VALUES ({', '.join('?' for _ in EVENT_COLUMNS.split(','))}, ?) ON CONFLICT (event_id) DO NOTHING")
_INSERT_TRANSITION = ("INSERT INTO transitions (subject, from_status, to_status, trigger, cause_id, reason, actor, at, "
                      "plan_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")


# --- reads ---------------------------------------------------------------------------------------------

def fetch_all(db: sqlite3.Connection, sql: str, params) -> list:
    return db.execute(sql, params).fetchall()


def ping(db: sqlite3.Connection) -> None:
    db.execute("SELECT 1 FROM subscriptions LIMIT 1").fetchall()


def load(db: sqlite3.Connection, subject: str) -> StoredSubject | None:
    row = db.execute(f"SELECT {SUBJECT_COLUMNS} FROM subscriptions WHERE subject = ?", (subject,)).fetchone()
    return subject_from_row(row) if row else None


def used(db: sqlite3.Connection, subject: str, windows: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
    where = " OR ".join("(meter = ? AND window_start = ?)" for _ in windows)
    params = [subject] + [v for pair in windows for v in pair]
    rows = db.execute(f"SELECT meter, window_start, used FROM quota_usage WHERE subject = ? AND ({where})",
                      params).fetchall()
    found = {(meter, start): used for meter, start, used in rows}
    return {w: found.get(w, 0) for w in windows}


def billed(db: sqlite3.Connection, subject: str, window: tuple[str, int]) -> int:
    row = db.execute("SELECT billed FROM quota_usage WHERE subject = ? AND meter = ? AND window_start = ?",
                     (subject, *window)).fetchone()
    return row[0] if row else 0


def load_many(db: sqlite3.Connection, subjects: list[str], windows: list[tuple[str, str, int]]) \
        -> tuple[list[StoredSubject | None], dict[tuple[str, str, int], int]]:
    """Several subjects' rows and (subject, meter, window start) usages, two statements in all."""
    marks = ", ".join("?" for _ in subjects)
    rows = db.execute(f"SELECT {SUBJECT_COLUMNS} FROM subscriptions WHERE subject IN ({marks})", subjects).fetchall()
    found = {row[0]: subject_from_row(row) for row in rows}
    usage = dict.fromkeys(windows, 0)
    if windows:
        values = ", ".join("(?, ?, ?)" for _ in windows)
        for subject, meter, start, used in db.execute(
                f"WITH w(subject, meter, window_start) AS (VALUES {values}) SELECT q.subject, q.meter, "
                "q.window_start, q.used FROM w JOIN quota_usage AS q ON q.subject = w.subject AND "
                "q.meter = w.meter AND q.window_start = w.window_start",
                [v for triple in windows for v in triple]):
            usage[(subject, meter, start)] = used
    return [found.get(subject) for subject in subjects], usage


def transitions(db: sqlite3.Connection, subject: str, limit: int) -> list[AuditEntry]:
    rows = db.execute(
        "SELECT subject, from_status, to_status, trigger, reason, at, plan_version, cause_id, actor "
        "FROM transitions WHERE subject = ? ORDER BY id DESC LIMIT ?", (subject, limit)).fetchall()
    return [AuditEntry(*row) for row in rows]


def event_seen(db: sqlite3.Connection, event_id: str) -> bool:
    return db.execute("SELECT 1 FROM subscription_events WHERE event_id = ?", (event_id,)).fetchone() is not None


def find_subject(db: sqlite3.Connection, customer: str | None, subscription: str | None,
                 payments: tuple[str, ...] = ()) -> str | None:
    row = _find_row(db, "subject", customer, subscription, payments)
    return row[0] if row else None


def _find_row(db: sqlite3.Connection, columns: str, customer: str | None, subscription: str | None,
              payments: tuple[str, ...] = ()):
    """`columns` of the subject linked to the subscription (its row's, else any it had), else to a charge or
    payment intent of its events, else to the customer (when no other subject holds it too); None if none is."""
    if subscription:
        row = db.execute(f"SELECT {columns} FROM subscriptions WHERE stripe_subscription = ? LIMIT 1",
                         (subscription,)).fetchone()
        # else another subscription the subject holds or held
        row = row or _linked_row(db, columns, subscription)
        if row:
            return row
    for value in payments:      # a payment is its buyer's, wherever its customer went since
        row = _linked_row(db, columns, value)
        if row:
            return row
    if customer:
        rows = db.execute(f"SELECT {columns} FROM subscriptions WHERE stripe_customer = ? LIMIT 2",
                          (customer,)).fetchall()
        if len(rows) == 1:      # a customer several subjects hold says whose an event is not
            return rows[0]
    return None


def customer_shared(db: sqlite3.Connection, customer: str) -> bool:
    return len(db.execute("SELECT 1 FROM subscriptions WHERE stripe_customer = ? LIMIT 2", (customer,)).fetchall()) > 1


def _linked_row(db: sqlite3.Connection, columns: str, stripe_id: str):
    linked = db.execute(_LINKED, (stripe_id,)).fetchone()
    if linked is None:
        return None
    return db.execute(f"SELECT {columns} FROM subscriptions WHERE subject = ?", (linked[0],)).fetchone()


def lookup(db: sqlite3.Connection, event_id: str, subject: str | None, customer: str | None,
           subscription: str | None, payments: tuple[str, ...] = ()
           ) -> tuple[bool, str | None, StoredSubject | None]:
    """Store.lookup's reads."""
    if event_seen(db, event_id):
        return True, None, None
    if subject is None:     # found by a Stripe id: its row read at once
        row = _find_row(db, SUBJECT_COLUMNS, customer, subscription, payments)
        return False, (row[0] if row else None), (subject_from_row(row) if row else None)
    return False, subject, load(db, subject)


def history(db: sqlite3.Connection, subject: str, since: float) -> list[EventRecord]:
    rows = db.execute(f"SELECT {EVENT_COLUMNS} FROM subscription_events WHERE subject = ? AND created >= ? "
                      "AND outcome != 'pending' ORDER BY created, event_id", (subject, since)).fetchall()
    return [event_from_row(r) for r in rows]


def pending(db: sqlite3.Connection, customer: str | None, subscription: str | None,
            payments: tuple[str, ...] = ()) -> list[EventRecord]:
    """Store.pending's events, in created order."""
    rows = db.execute(_PENDING, {"customer": customer, "subscription": subscription}).fetchall()
    for payment in payments:
        rows += db.execute(_PENDING_PAYMENT, {"payment": payment, "customer": customer,
                                              "subscription": subscription}).fetchall()
    if payments:
        rows = list({row[0]: row for row in rows}.values())      # a charge and its payment intent: one row
    if len(rows) > 1:
        rows.sort(key=lambda row: (row[2], row[0]))     # (created, event_id)
    return [event_from_row(r) for r in rows]


def pending_linked(db: sqlite3.Connection, after: tuple[float, str] | None, limit: int) -> list[EventRecord]:
    sql, args = pending_linked_sql(after, lambda n: f"?{n}")
    args[-1] = limit
    return [event_from_row(r) for r in db.execute(sql, args).fetchall()]


def last_admin_change(db: sqlite3.Connection, subject: str) -> float | None:
    return db.execute("SELECT MAX(at) FROM transitions WHERE subject = ? AND trigger LIKE 'admin:%' AND "
                      "NOT (trigger = 'admin:traits' AND from_status IS to_status)", (subject,)).fetchone()[0]


def due(db: sqlite3.Connection, now: float, limit: int, skip: tuple[str, ...] = ()) -> list[StoredSubject]:
    skipped = f" AND subject NOT IN ({', '.join('?' for _ in skip)})" if skip else ""
    rows = db.execute(f"SELECT {SUBJECT_COLUMNS} FROM subscriptions WHERE timer_due <= ?{skipped} "
                      "ORDER BY timer_due LIMIT ?", (now, *skip, limit)).fetchall()
    return [subject_from_row(r) for r in rows]


def doubtful(db: sqlite3.Connection, statuses: tuple[str, ...], unconfirmed_before: float,
             limit: int) -> list[StoredSubject]:
    """Store.doubtful's search: it visits every subscribed subject (no index can answer it)."""
    marks = ", ".join("?" for _ in statuses) or "NULL"
    rows = db.execute(
        f"SELECT {SUBJECT_COLUMNS} FROM subscriptions WHERE stripe_subscription IS NOT NULL AND "
        f"(status IN ({marks}) OR COALESCE(confirmed_at, 0) < ?) ORDER BY COALESCE(confirmed_at, 0) LIMIT ?",
        (*statuses, unconfirmed_before, limit)).fetchall()
    return [subject_from_row(r) for r in rows]


def event_log(db: sqlite3.Connection, outcome, type_, before, limit: int) -> list[EventRecord]:
    sql, args = event_log_sql(outcome, type_, before, lambda n: f"?{n}")
    args[-1] = limit
    return [event_from_row(r) for r in db.execute(sql, args).fetchall()]


def events(db: sqlite3.Connection, subject: str, limit: int) -> list[EventRecord]:
    rows = db.execute(f"SELECT {EVENT_COLUMNS} FROM subscription_events WHERE subject = ? "
                      "ORDER BY created DESC, event_id DESC LIMIT ?", (subject, limit)).fetchall()
    return [event_from_row(r) for r in rows]


# --- writes (each runs inside a transaction the caller holds) ------------------------------------------

def migrate(db: sqlite3.Connection) -> tuple[int, int]:
    """The migrations past PRAGMA user_version; (version before, after)."""
    # A read of the schema table first: the connection then reloads its copy of the schema if another one changed
    # it (PRAGMA user_version does not look), so that no statement of a migration is checked against a stale copy
    # (ADD COLUMN refused as a duplicate of a column dropped since).
    db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    before = version = db.execute("PRAGMA user_version").fetchone()[0]
    for number, _, sql in migrations("sqlite"):
        if number > version:
            for statement in statements(sql):
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {number}")
            version = number
    return before, version


# A window of the subject's meter is past once a newer one began, and it is not the subject's current billing
# period (a shorter window of another status may have come after it within the period): the newest, and the
# current period's, are kept however long ago they began (a billing period of up to three years, a retention set
# shorter than a month), their usage and what they billed counting.
_PAST_WINDOW = ("EXISTS (SELECT 1 FROM quota_usage AS n WHERE n.subject = quota_usage.subject AND "
               "n.meter = quota_usage.meter AND n.window_start > quota_usage.window_start) AND NOT EXISTS ("
               "SELECT 1 FROM subscriptions AS s WHERE s.subject = quota_usage.subject AND "
               "CAST(s.period_start AS INTEGER) = quota_usage.window_start)")


def cleanup(db: sqlite3.Connection, usage_before: int, keys_before: float) -> tuple[int, int]:
    usage = db.execute(f"DELETE FROM quota_usage WHERE window_start > 0 AND window_start < ? AND {_PAST_WINDOW}",
                       (usage_before,))
    keys = db.execute("DELETE FROM usage_keys WHERE created_at < ?", (keys_before,))
    return usage.rowcount, keys.rowcount


def count(db: sqlite3.Connection, current: StoredSubject, meter: str, window_start: int, amount: int,
          limit: int | None, key: str | None, now: float) -> Counted:
    """Store.count's statements."""
    subject = current.state.subject
    if key is not None:
        seen = db.execute("SELECT subject, meter, amount, used_after FROM usage_keys WHERE key = ?", (key,)).fetchone()
        if seen:
            if tuple(seen[:3]) != (subject, meter, amount):
                raise IdempotencyConflict(
                    f"idempotency key {key!r} was first used for subject {seen[0]!r}, meter {seen[1]!r}, "
                    f"amount {seen[2]}; use a new key for different work")
            return Counted(True, seen[3], duplicate=True)
    # Is the stored version still the one the caller decided on? A subject not stored yet (version 0) is
    # stored now, in its initial state.
    row = db.execute("SELECT version FROM subscriptions WHERE subject = ?", (subject,)).fetchone()
    if current.version == 0 and row is None:
        if limit is not None and amount > limit:    # refused: a subject not stored yet stays so
            return Counted(False, 0)
        db.execute(_INSERT_SUBJECT, _subject_params(current, now))
    elif row is None or row[0] != current.version:
        return Counted(False, 0, conflict=True)
    window = (subject, meter, window_start)
    if db.execute(_ADD_USAGE, (amount, *window, USAGE_CEILING - amount, limit, limit, amount)).rowcount:
        used = db.execute(_USED, window).fetchone()[0]
    else:       # the window has no row yet, or the amount would take it past the limit or the ceiling
        found = db.execute(_USED, window).fetchone()
        before = found[0] if found else 0
        if limit is not None and before > limit - amount:
            return Counted(False, before)
        if found is not None or amount > USAGE_CEILING:
            raise UsageCeiling(before, amount)      # rolled back whole: a new subject's row too
        db.execute("INSERT INTO quota_usage (subject, meter, window_start, used) VALUES (?, ?, ?, ?)",
                   (*window, amount))
        used = amount
    if key is not None:
        db.execute("INSERT INTO usage_keys (key, subject, meter, amount, window_start, used_after, created_at) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?)", (key, subject, meter, amount, window_start, used, now))
    return Counted(True, used)


# A stored event a fold would rewrite that another subject's fold has taken since it was read (two adoptions
# reaching one waiting event through different Stripe ids): the fold is read again, so that no event is folded
# into two subjects.
_TAKEN_ELSEWHERE = ("SELECT 1 FROM subscription_events WHERE event_id IN (SELECT value FROM json_each(?)) AND "
                    "outcome <> 'pending' AND subject IS NOT NULL AND subject <> ? LIMIT 1")


def commit(db: sqlite3.Connection, change: Change) -> bool:
    """Store.commit's statements."""
    new = change.subject
    s = new.state
    if change.replayed_events and db.execute(_TAKEN_ELSEWHERE, (json.dumps([e.id for e in change.replayed_events]),
                                                                s.subject)).fetchone():
        return False
    if change.expected_version == 0:
        if db.execute("SELECT 1 FROM subscriptions WHERE subject = ?", (s.subject,)).fetchone():
            return False
        db.execute(_INSERT_SUBJECT, _subject_params(new, now_of(change)))
    else:
        current = db.execute(_CURRENT, (s.subject, change.expected_version)).fetchone()
        if current is None:
            return False
        values = subject_values(new)
        sql, positions = _update_subject(tuple(values[i] != was for i, was in zip(_INDEXED_AT, current)))
        db.execute(sql, (*[values[i] for i in positions], now_of(change), s.subject, change.expected_version))
    if change.audits:
        db.executemany(_INSERT_TRANSITION, [_transition_values(a) for a in change.audits])
    for event in change.new_events:
        if not _insert_event(db, event):
            raise DuplicateEvent(event.id)
    for event in change.replayed_events:
        db.execute("UPDATE subscription_events SET subject = ?, outcome = ?, reason = ?, state_before = ?, "
                   "fold_rank = ? WHERE event_id = ?",
                   (event.subject, event.outcome, event.reason, state_json(event.state_before), event.fold_rank,
                    event.id))
    _upsert_payments(db, change.payments)
    if change.links:
        db.executemany(_LINK, [(stripe_id, s.subject) for stripe_id in change.links])
    if change.grants:
        insert_grants(db, s.subject, change.grants, "stripe")
    if change.reversals or any(g.payment_intent for g in change.grants):
        take_back(db, s.subject, change)
    return True


def record_event(db: sqlite3.Connection, event: EventRecord, payments: tuple[Payment, ...]) -> bool:
    """Store.record_event's statements."""
    if not _insert_event(db, event):
        return False
    _upsert_payments(db, payments)
    return True


def _insert_event(db: sqlite3.Connection, e: EventRecord) -> bool:
    cursor = db.execute(_INSERT_EVENT, (e.id, e.type, e.created, e.payload, e.outcome, e.reason, e.subject,
                                        e.stripe_customer, e.stripe_subscription, state_json(e.state_before),
                                        e.stripe_payment, e.fold_rank, e.stripe_payment_intent, time.time()))
    return cursor.rowcount == 1


def _upsert_payments(db: sqlite3.Connection, payments) -> None:
    for p in payments:
        db.execute(
            "INSERT INTO payments (invoice_id, subject, stripe_customer, stripe_subscription, status, amount, "
            "currency, event_id, created, updated_created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (invoice_id) DO UPDATE SET status = excluded.status, amount = excluded.amount, "
            "subject = COALESCE(excluded.subject, payments.subject), event_id = excluded.event_id, "
            "updated_created = excluded.updated_created WHERE excluded.updated_created >= payments.updated_created",
            (p.invoice_id, p.subject, p.stripe_customer, p.stripe_subscription, p.status, p.amount, p.currency,
             p.event_id, p.created, p.created))


def commit_batch(db: sqlite3.Connection, changes: list[Change]) -> set[str]:
    """Store.commit_batch's statements. A batch writes the subjects' state and audit rows only: their Stripe
    ids, watermark, confirmation and fold state stay as stored (the version check makes the stored row the one
    each change was made from), which spares the indexes on the Stripe ids a rewrite of every row. An UPDATE a
    subject, whose row count says whether its version held: one UPDATE ... FROM (VALUES ...) RETURNING for all
    of them was slower (SQLite materializes the values and the joined rows first)."""
    execute = db.execute
    done: set[str] = set()
    for c in changes:
        st = c.subject.state
        if execute(_BATCH_UPDATE, (*state_values(st), st.since, st.subject, c.expected_version)).rowcount == 1:
            done.add(st.subject)
    db.executemany(_INSERT_TRANSITION, [_transition_values(a) for c in changes if c.subject.state.subject in done
                                        for a in c.audits])
    return done


def _transition_values(a: AuditEntry) -> tuple:
    return (a.subject, a.from_status, a.to_status, a.trigger, a.cause_id, a.reason, a.actor, a.at, a.plan_version)


def _subject_params(new: StoredSubject, now: float) -> tuple:
    return (new.state.subject, *subject_values(new), now)


def take_back(db: sqlite3.Connection, subject: str, change: Change) -> None:
    """The change's facts of money back recorded, and what they (and those recorded before) take of the grants of
    their payments and of its new grants taken."""
    db.executemany(credits_sql.INSERT_REVERSAL, [credits_sql.fact_values(subject, f) for f in change.reversals])
    for payment in credits_sql.reversal_payments(change.reversals, change.grants):
        grants = db.execute(credits_sql.PAYMENT_GRANTS, (subject, payment)).fetchall()
        rows = db.execute(credits_sql.PAYMENT_REVERSALS, (subject, payment)).fetchall()
        inserts, takes = credits_sql.settle_payment(subject, payment, grants, rows)
        db.executemany(credits_sql.INSERT_REVERSAL, inserts)
        db.executemany(credits_sql.TAKE_BACK, takes)


def insert_grants(db: sqlite3.Connection, subject: str, grants, actor: str | None) -> int:
    """Credit grants made (one whose id the subject holds already is not made again); how many were made."""
    made = 0
    for g in grants:
        made += db.execute(credits_sql.INSERT_GRANT, credits_sql.grant_values(subject, g, actor)).rowcount
    return made
