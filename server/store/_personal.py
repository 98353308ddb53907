"""The SQL of retention and erasure, one text for both databases: written with ? and numbered for PostgreSQL.

An erasure moves a subject's rows to its pseudonym in one transaction: the state row (written anew: its state
names the subject), usage summed into the pseudonym's windows, the audit (an admin's free-text reason may name
the person: it is replaced by a sentence saying so), payments and events (rewritten by the caller: reduced
payloads, the pseudonym for the subject, Stripe ids dropped when no subscription is live), credit grants
(those bought keep the session's id as a pseudonym once Stripe ids are dropped) and what refunds took of them
(their Stripe ids so too). Idempotency keys are
dropped: they are the caller's text, and live a few weeks at most.
"""
from __future__ import annotations

from ._base import Erasure, EventRecord, state_json
from ._rows import EVENT_COLUMNS, WRITTEN, event_from_row, subject_values

UNREDUCED = (f"SELECT {EVENT_COLUMNS} FROM subscription_events WHERE reduced_at IS NULL AND created < ? AND "
             "(created > ? OR (created = ? AND event_id > ?)) ORDER BY created, event_id LIMIT ?")
REDUCE = "UPDATE subscription_events SET payload = ?, reduced_at = ? WHERE event_id = ?"
# A subject's events, those waiting for its customer or subscription, and those waiting for a charge or payment
# intent it holds (a dispute names nothing else; it waits for either): linked to it, or named by one of its events
# (one recorded stale by a gate before 0.2.0 linked nothing). An event waiting for several is found more than
# once: personal_events keeps it once.
_HELD_PAYMENTS = ("SELECT stripe_id FROM stripe_links WHERE subject = ? UNION "
                  "SELECT stripe_payment FROM subscription_events WHERE subject = ? AND stripe_payment IS NOT NULL")
PERSONAL_EVENTS = (f"SELECT {EVENT_COLUMNS} FROM subscription_events WHERE subject = ? UNION ALL "
                   f"SELECT {EVENT_COLUMNS} FROM subscription_events WHERE subject IS NULL AND "
                   "((stripe_customer IS NOT NULL AND stripe_customer = ?) OR "
                   "(stripe_subscription IS NOT NULL AND stripe_subscription = ?)) UNION ALL "
                   f"SELECT {EVENT_COLUMNS} FROM subscription_events WHERE outcome = 'pending' AND subject IS NULL "
                   f"AND (stripe_payment IN ({_HELD_PAYMENTS}) OR stripe_payment_intent IN ({_HELD_PAYMENTS})) "
                   "ORDER BY created, event_id")
PERSONAL_INVOICES = ("SELECT invoice_id FROM payments WHERE subject = ? OR (subject IS NULL AND "
                     "((stripe_customer IS NOT NULL AND stripe_customer = ?) OR "
                     "(stripe_subscription IS NOT NULL AND stripe_subscription = ?)))")
# Grants bought through Checkout are named by the session (cs_...): a Stripe id, pseudonymised with the others.
PERSONAL_GRANTS = "SELECT grant_id FROM credit_grants WHERE subject = ? AND source = 'purchase'"
# The Stripe ids credits keep beside: the payment intent a grant was bought with, and the refunds, disputes,
# charges and payment intents of money that came back.
PERSONAL_CREDIT_IDS = ("SELECT stripe_payment_intent FROM credit_grants WHERE subject = ? AND "
                       "stripe_payment_intent IS NOT NULL UNION "
                       "SELECT reversal_id FROM credit_reversals WHERE subject = ? UNION "
                       "SELECT payment_intent FROM credit_reversals WHERE subject = ? UNION "
                       "SELECT charge FROM credit_reversals WHERE subject = ? AND charge IS NOT NULL")
ERASED = "SELECT 1 FROM erasures WHERE pseudonym = ?"
KEEPING_IDS = ("SELECT pseudonym FROM erasures WHERE stripe_ids_dropped_at IS NULL AND pseudonym > ? "
               "ORDER BY pseudonym LIMIT ?")
_VERSION = "SELECT version FROM subscriptions WHERE subject = ?"
_WRITE_ROW = (f"INSERT INTO subscriptions (subject, {', '.join(WRITTEN)}, version, updated_at) "
              f"VALUES (?, {', '.join('?' for _ in WRITTEN)}, 1, ?) ON CONFLICT (subject) DO UPDATE SET "
              + ", ".join(f"{c} = excluded.{c}" for c in WRITTEN)
              + ", version = subscriptions.version + 1, updated_at = excluded.updated_at")
_MOVE = (
    ("INSERT INTO quota_usage (subject, meter, window_start, used, billed) SELECT ?, meter, window_start, used, "
     "billed FROM quota_usage WHERE subject = ? ON CONFLICT (subject, meter, window_start) DO UPDATE SET "
     "used = quota_usage.used + excluded.used, billed = quota_usage.billed + excluded.billed", "pseudonym subject"),
    ("DELETE FROM quota_usage WHERE subject = ?", "subject"),
    ("DELETE FROM usage_keys WHERE subject = ?", "subject"),
    ("UPDATE transitions SET reason = COALESCE(from_status, '') || ' -> ' || to_status || ' by ' || "
     "COALESCE(actor, 'an admin') "
     "|| ': the reason given was erased with the subject''s personal data' "
     "WHERE subject = ? AND trigger LIKE 'admin:%'", "subject"),
    ("UPDATE transitions SET subject = ? WHERE subject = ?", "pseudonym subject"),
    ("UPDATE payments SET subject = ? WHERE subject = ?", "pseudonym subject"),
    ("UPDATE stripe_links SET subject = ? WHERE subject = ?", "pseudonym subject"),
    # Credits stay with the pseudonym (a grant of the same id there: its amounts summed); an admin's reason may
    # name the person, so it goes as an admin's free-text reason in the audit does.
    ("INSERT INTO credit_grants (subject, grant_id, meter, amount, remaining, priority, created_at, expires_at, "
     "source, note, actor, stripe_payment_intent, paid, tier_since) SELECT ?, grant_id, meter, amount, remaining, "
     "priority, created_at, expires_at, source, "
     "CASE WHEN source = 'admin' THEN 'an admin''s grant: the reason given was erased with the subject''s "
     "personal data' ELSE note END, actor, stripe_payment_intent, paid, tier_since FROM credit_grants "
     "WHERE subject = ? "
     "ON CONFLICT (subject, grant_id) DO UPDATE SET amount = credit_grants.amount + excluded.amount, "
     "remaining = credit_grants.remaining + excluded.remaining", "pseudonym subject"),
    ("DELETE FROM credit_grants WHERE subject = ?", "subject"),
    # What came back and what it took: the same facts under the pseudonym (one it holds already is the same one).
    ("INSERT INTO credit_reversals (subject, reversal_id, grant_id, kind, payment_intent, charge, amount, paid, "
     "units, taken, event_id, created_at) SELECT ?, reversal_id, grant_id, kind, payment_intent, charge, amount, "
     "paid, units, taken, event_id, created_at FROM credit_reversals WHERE subject = ? "
     "ON CONFLICT (subject, reversal_id, grant_id) DO NOTHING", "pseudonym subject"),
    ("DELETE FROM credit_reversals WHERE subject = ?", "subject"),
    ("UPDATE overage_reports SET subject = ? WHERE subject = ?", "pseudonym subject"),
    ("DELETE FROM subscriptions WHERE subject = ?", "subject"),
)
_EVENT = ("UPDATE subscription_events SET payload = ?, subject = ?, stripe_customer = ?, stripe_subscription = ?, "
          "state_before = ?, reduced_at = ?, stripe_payment = ?, stripe_payment_intent = ?, reason = ? "
          "WHERE event_id = ?")
# The Stripe ids (subscriptions, charges, payment intents) that led to the subject, dropped with its others.
_LINKS_DROPPED = "DELETE FROM stripe_links WHERE subject = ?"
# Overage already sent or refused needs its customer no more; a pending report keeps it until it is sent.
_REPORTS_IDS_DROPPED = "UPDATE overage_reports SET stripe_customer = NULL WHERE subject = ? AND status <> 'pending'"
_INVOICE = ("UPDATE payments SET invoice_id = ?, stripe_customer = NULL, stripe_subscription = NULL "
            "WHERE invoice_id = ?")
_GRANT = "UPDATE credit_grants SET grant_id = ? WHERE subject = ? AND grant_id = ?"
# The credit tables' Stripe ids, each replaced where it appears (a grant's id where a reversal names it as well).
_CREDIT_IDS = ("UPDATE credit_reversals SET grant_id = ? WHERE subject = ? AND grant_id = ?",
               "UPDATE credit_grants SET stripe_payment_intent = ? WHERE subject = ? AND stripe_payment_intent = ?",
               "UPDATE credit_reversals SET reversal_id = ? WHERE subject = ? AND reversal_id = ?",
               "UPDATE credit_reversals SET payment_intent = ? WHERE subject = ? AND payment_intent = ?",
               "UPDATE credit_reversals SET charge = ? WHERE subject = ? AND charge = ?")
_REMEMBER = ("INSERT INTO erasures (pseudonym, erased_at, actor, stripe_ids_dropped_at) VALUES (?, ?, ?, ?) "
             "ON CONFLICT (pseudonym) DO UPDATE SET erased_at = excluded.erased_at, actor = excluded.actor, "
             "stripe_ids_dropped_at = excluded.stripe_ids_dropped_at")
_IDS_DROPPED = "UPDATE erasures SET stripe_ids_dropped_at = ? WHERE pseudonym = ?"
_AUDIT = ("INSERT INTO transitions (subject, from_status, to_status, trigger, cause_id, reason, actor, at, "
          "plan_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")


def personal_events_args(subject: str, customer: str | None, subscription: str | None) -> tuple:
    return subject, customer, subscription, subject, subject, subject, subject


def personal_events(rows) -> list[EventRecord]:
    """PERSONAL_EVENTS' rows as events, each once."""
    return list({e.id: e for e in map(event_from_row, rows)}.values())


def numbered(sql: str) -> str:
    """The statement with PostgreSQL's $1, $2, ... for its ? marks (our statements hold no ? in strings)."""
    parts = sql.split("?")
    return parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], 1))


def unreduced_args(before: float, after: tuple[float, str] | None, limit: int) -> tuple:
    created, event_id = after if after is not None else (-1.0, "")
    return before, created, created, event_id, limit


def erasure_statements(e: Erasure) -> list[tuple[str, tuple]]:
    """Every statement of an erasure, in order, as (SQL with ? marks, arguments). They run once the subject's
    version (version_check) is the one the erasure was made from."""
    out: list[tuple[str, tuple]] = []
    if e.row is not None:
        out.append((_WRITE_ROW, (e.pseudonym, *subject_values(e.row), e.at)))
    if e.subject != e.pseudonym:
        names = {"subject": e.subject, "pseudonym": e.pseudonym}
        out.extend((sql, tuple(names[n] for n in args.split())) for sql, args in _MOVE)
    for r in e.events:
        out.append((_EVENT, (r.payload, r.subject, r.stripe_customer, r.stripe_subscription,
                             state_json(r.state_before), e.at, r.stripe_payment, r.stripe_payment_intent, r.reason,
                             r.id)))
    out.extend((_INVOICE, (kept, stored)) for stored, kept in e.invoices)
    out.extend((_GRANT, (kept, e.pseudonym, stored)) for stored, kept in e.grants)
    out.extend((_CREDIT_IDS[0], (kept, e.pseudonym, stored)) for stored, kept in e.grants)
    out.extend((sql, (kept, e.pseudonym, stored)) for stored, kept in e.credit_ids for sql in _CREDIT_IDS[1:])
    dropped = e.at if e.drop_stripe_ids else None
    if dropped is not None:
        out.append((_LINKS_DROPPED, (e.pseudonym,)))
        out.append((_REPORTS_IDS_DROPPED, (e.pseudonym,)))
    if e.subject != e.pseudonym:
        out.append((_REMEMBER, (e.pseudonym, e.at, e.actor, dropped)))
    elif dropped is not None:
        out.append((_IDS_DROPPED, (dropped, e.pseudonym)))
    if e.audit is not None and e.row is not None:
        a = e.audit
        out.append((_AUDIT, (a.subject, a.from_status, a.to_status, a.trigger, a.cause_id, a.reason, a.actor, a.at,
                             a.plan_version)))
    return out


def version_check(e: Erasure) -> tuple[str, tuple]:
    """The query of the subject's stored version (no row: version 0)."""
    return _VERSION, (e.subject,)
