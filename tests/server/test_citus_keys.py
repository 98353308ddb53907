"""Every statement the PostgreSQL store sends is keyed so that the schema can run distributed on Citus.

README ("Beyond one database server") lays the tables out: subscriptions, quota_usage, usage_keys and
transitions distributed by subject and colocated; subscription_events by event_id and payments by invoice_id
(their unique keys: exactly-once needs them unique, and a pending event has no subject yet). A statement on a
table distributed by subject must name its subject(s) (Citus routes it to that subject's shard), one on an
id-distributed table its id; anything else is an exception listed below with the reason it may fan out.

The statements are those a real store sends while the test drives every one of its methods (asyncpg's query
logger), plus those inside plangate_count_batch and plangate_spend, read from their newest migrations.
"""
from __future__ import annotations

import re

from plangate.engine import SubjectState
from plangate.server.store import AuditEntry, Change, ConsoleSession, EventRecord, Payment, StoredSubject
from plangate.server.store._base import Erasure
from plangate.server.store._credits import Spend
from plangate.server.store._plans import Deploy, PlanRecord
from plangate.server.store._migrations import migrations
from plangate.server.store._postgres import PostgresStore

BY_SUBJECT = ("subscriptions", "quota_usage", "usage_keys", "transitions")
BY_ID = {"subscription_events": "event_id", "payments": "invoice_id", "stripe_links": "stripe_id"}
SUBJECT_KEY = re.compile(r"(?<!NOT )\bsubject\s*=\s*(\$\d+|p_subjects\[i\]|p_subject\b|ANY\(\$\d+)|"
                         r"^INSERT INTO \w+ (AS \w+ )?\((key, )?subject\b", re.I)
# Statements that cannot be routed to one subject's shard, and why that is acceptable (each runs off the
# request path, or once per webhook, never per check or consume).
EXCEPTIONS = {
    "SELECT 1 FROM subscriptions LIMIT 1": "/readyz's probe: any one shard answers it",
    "FROM subscriptions WHERE stripe_subscription = $1 UNION ALL": "a webhook finds its subject by its Stripe "
                                                                   "subscription or customer (once per event): "
                                                                   "every shard of subscriptions",
    "FROM subscriptions WHERE stripe_customer = $1 LIMIT 2": "whether several subjects hold a customer, for an "
                                                            "event its Stripe ids linked to no subject (once per "
                                                            "such event): every shard of subscriptions",
    "WHERE timer_due <= $1": "the sweep's due-timer scan: every shard, once a minute, through the timer index",
    "status = ANY($1::text[]) OR": "reconciliation's search for doubtful subjects: every shard, every 15 minutes",
    "DELETE FROM quota_usage WHERE window_start": "cleanup of windows long past: every shard, once a day",
    "DELETE FROM usage_keys WHERE created_at": "cleanup of old idempotency keys: every shard, once a day",
    "FROM unnest($1::text[], $2::bigint[]": "the sweep's chunk of timer changes (one UPDATE for 250 subjects); on "
                                            "Citus it goes shard by shard as a multi-shard transaction",
    "FROM subscription_events WHERE subject = $1": "a subject's events (its fold, per webhook; its view): every "
                                                   "shard of subscription_events, which is distributed by event_id",
    "FROM usage_keys AS k WHERE k.key = p_keys[i]": "a key first used for another subject (answered 409): found by "
                                                    "the key alone where keys are unique across subjects; on Citus "
                                                    "they are unique per subject and this never runs",
    "NULL::BIGINT FROM usage_keys AS k WHERE k.key = p_key": "plangate_spend's search of a key first used for "
                                                            "another subject, as plangate_count_batch's (looked "
                                                            "up by its subject first)",
    "WHERE event_id = ANY($1::text[]) ORDER BY event_id FOR UPDATE": "the stored events a fold rewrites, locked "
                                                                     "first (per webhook that folds stored events): "
                                                                     "the shards of those events",
    "FROM subscription_events WHERE reduced_at IS NULL": "retention's scan of events not reduced yet: every shard, "
                                                         "in the daily job",
    "SELECT invoice_id FROM payments WHERE subject = $1 OR": "an erasure's search of a person's invoices (by subject "
                                                            "or Stripe ids): every shard of payments, per erasure",
    "UPDATE payments SET subject = $1 WHERE subject = $2": "an erasure moving invoices to the pseudonym: every shard "
                                                          "of payments, per erasure",
    "UPDATE transitions SET subject = $1 WHERE subject = $2": "an erasure moving the audit to the pseudonym: it changes "
                                                             "the distribution key, which Citus refuses; there it must "
                                                             "be an INSERT ... SELECT and a DELETE (not done: README)",
    "UPDATE stripe_links SET subject = $1 WHERE subject = $2": "an erasure moving a person's Stripe links to the "
                                                              "pseudonym: every shard of stripe_links, per erasure",
    "DELETE FROM stripe_links WHERE subject = $1": "an erasure dropping a person's Stripe links: every shard of "
                                                  "stripe_links, per erasure",
    "FROM subscriptions GROUP BY status, tier, plan_version": "a plan deploy's census: every shard, once per deploy",
    "FROM subscriptions WHERE plan_version = ANY($1::text[])": "a deploy moving subjects off old plan versions, in "
                                                              "subject order: every shard, per deploy",
    "FROM subscriptions WHERE (status = ANY($1::text[]) OR": "a deploy finding subjects under renamed statuses or "
                                                            "tiers: every shard, per deploy",
    "FROM subscription_events ORDER BY created DESC": "the webhook log (GET /v1/events, the console): every shard "
                                                      "of subscription_events, a page of at most 201 rows a read",
    "FROM subscription_events WHERE outcome = $1": "the webhook log of one outcome: every shard, a page a read",
    "FROM subscription_events WHERE outcome = 'pending'": "events waiting for a subject, found by Stripe ids when "
                                                         "one links: every shard, once per linking event",
}
TABLES = re.compile(r"\b(?:FROM|INTO|UPDATE|JOIN)\s+(\w+)", re.I)


FUNCTIONS = ("plangate_count_batch", "plangate_spend")


def _function_statements() -> list[str]:
    """The SQL statements inside the store's functions (each one's newest definition)."""
    found = []
    for name in FUNCTIONS:
        sql = next(sql for _, _, sql in reversed(migrations("postgresql")) if f"FUNCTION {name}(" in sql)
        body = sql.split(f"FUNCTION {name}(", 1)[1].split("$$")[1]
        found += [" ".join(s.split()) for s in re.findall(r"((?:INSERT|UPDATE|DELETE|SELECT)\b[^;]*);", body)]
    return found


def _problem(statement: str) -> str | None:
    """Why a statement is not keyed, or None."""
    tables = {t.lower() for t in TABLES.findall(statement)} & {*BY_SUBJECT, *BY_ID}
    if not tables or any(pattern in statement for pattern in EXCEPTIONS):
        return None
    for table in tables:
        if table in BY_ID:
            if not re.search(rf"\b{BY_ID[table]}\s*=\s*\$\d+|^INSERT INTO {table} \({BY_ID[table]}\b", statement):
                return f"{table} without its {BY_ID[table]}"
        elif not SUBJECT_KEY.search(statement):
            return f"{table} without its subject"
    return None


def state(subject: str, **changes) -> SubjectState:
    return SubjectState(subject, "limited_free_trial", since=100.0, plan_version="v1").with_(**changes)


async def _drive(store: PostgresStore) -> None:
    """Every method of the store, the way the gate calls them."""
    await store.ping()
    await store.count(StoredSubject(state("a"), 0), "requests", 0, 2, 10, "k-first", 100.0)
    a = await store.load("a")
    await store.count(a, "requests", 0, 1, 10, "k-next", 100.0)
    await store.count(a, "requests", 0, 50, 10, "k-refused", 100.0)
    a = await store.load("a")
    await store.spend(a, "requests", 0, 15, Spend(limit=10, ceiling=20, cap=10, report="requests_over",
                                                  report_id="pgo_1", customer="cus_a"), "k-spend", 100.0)
    await store.used("a", [("requests", 0)])
    await store.load_many(["a", "b"], [("a", "requests", 0)])
    event = EventRecord("evt_1", "checkout.session.completed", 100.0, "{}", "applied", "", "b", "cus_b", "sub_b")
    payment = Payment("in_1", "paid", 100.0, "b", "cus_b", "sub_b", 500, "eur", "evt_1")
    b = StoredSubject(state("b", status="paid_trial", timer_due=150.0), 0, "cus_b", "sub_b")
    audit = AuditEntry("b", "limited_free_trial", "paid_trial", "stripe:checkout", "r", 100.0, "v1", "evt_1")
    await store.commit(Change(b, 0, (audit,), new_events=(event,), payments=(payment,), links=("sub_b", "ch_1")))
    replayed = EventRecord("evt_1", event.type, 100.0, "{}", "noop", "", "b", "cus_b", "sub_b", state("b"))
    b = await store.load("b")
    await store.commit(Change(b, b.version, replayed_events=(replayed,)))
    await store.record_event(EventRecord("evt_2", "invoice.paid", 90.0, "{}", "pending", "", None, "cus_c"),
                             (Payment("in_2", "paid", 90.0, None, "cus_c"),))
    await store.event_seen("evt_2")
    await store.find_subject("cus_b", "sub_b", ("ch_1",))
    await store.find_subject("cus_b", None)
    await store.customer_shared("cus_b")
    await store.lookup("evt_3", None, "cus_b", "sub_b")
    await store.history("b", 0.0)
    await store.pending("cus_c", "sub_c", ("ch_1",))
    await store.last_admin_change("b")
    due = await store.due(200.0, 10)
    await store.commit_batch([Change(d.with_state(d.state.with_(timer_due=None)), d.version) for d in due])
    await store.doubtful(("billing_problem",), 1e12, 10)
    await store.cleanup(10**9, 1.0)
    await store.events("b")
    await store.event_log(None, None, None, 10)
    await store.event_log("pending", "invoice.paid", (1.0, "evt_1"), 10)
    await store.transitions("b")
    async with store.exclusive("sweep"):
        pass
    await _drive_personal_data(store)
    await _drive_plans(store)


async def _drive_personal_data(store: PostgresStore) -> None:
    await store.unreduced(1e12, None, 10)
    await store.reduce_payloads([("evt_1", "{}")], 150.0)
    await store.scrub()
    await store.compact()
    await store.personal_rows("b", "cus_b", "sub_b")
    b = await store.load("b")
    audit = AuditEntry("p_b", b.state.status, b.state.status, "erasure", "erased", 160.0, "v1")
    await store.erase(Erasure("b", "p_b", b.version, StoredSubject(state("p_b"), 0), (), (("in_1", "in_p1"),),
                              False, 160.0, "test", audit))
    await store.erase(Erasure("p_b", "p_b", 1, None, (), (), True, 170.0, "test"))
    await store.erased("p_b")
    await store.erasures_keeping_ids(10)


async def _drive_plans(store: PostgresStore) -> None:
    await store.census()
    deploy = await store.record_deploy(PlanRecord("v2", "0" * 64, "plans.yaml", "version: 1", 180.0),
                                       Deploy(0, "v2", "v1", 180.0, "test", "node-1", "a test deploy"))
    await store.deploy_moved(deploy.id, 1)
    await store.deploys()
    await store.plan_versions(("v1", "v2"))
    await store.subjects_named(("paid",), ("pro",), 10, ("p_b",))
    await store.subjects_on(("v1",), 10, "a")
    session = ConsoleSession("0" * 64, "Ada", True, "csrf", 180.0, 200.0)
    await store.open_console_session(session, 1000, "1" * 64)
    await store.console_session(session.id_hash)
    await store.close_console_session(session.id_hash)


class TestCitusKeys:
    async def test_every_statement_is_keyed_by_subject_or_a_listed_exception(self, pg_dsn):
        sent: list[str] = []
        store = PostgresStore(pg_dsn)
        store.query_logger = lambda q: sent.append(" ".join(q.query.split()))
        await store.open()
        try:
            await store.migrate()
            sent.clear()                # the schema's own statements are DDL, run once by `plangate migrate`
            await _drive(store)
        finally:
            await store.close()
        statements = sorted(set(sent)) + _function_statements()
        assert any("plangate_count_batch" in s for s in statements) and len(statements) > 25
        assert any("FROM plangate_spend(" in s for s in statements)
        problems = {s: _problem(s) for s in statements if _problem(s)}
        assert not problems, "\n".join(f"{why}: {s}" for s, why in problems.items())
        # Every exception is still needed: a listed statement the store no longer sends is a stale entry.
        unused = [p for p in EXCEPTIONS if not any(p in s for s in statements)]
        assert not unused, unused

    def test_the_check_rejects_a_statement_not_keyed_by_subject(self):
        assert _problem("SELECT used FROM quota_usage WHERE meter = $1") == "quota_usage without its subject"
        assert _problem("SELECT 1 FROM subscriptions WHERE NOT subject = ANY($1::text[])") == \
            "subscriptions without its subject"
        assert _problem("UPDATE subscription_events SET outcome = $1 WHERE subject = $2") == \
            "subscription_events without its event_id"
        assert _problem("SELECT used FROM quota_usage WHERE subject = $1 AND meter = $2") is None
