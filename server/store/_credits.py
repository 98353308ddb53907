"""Credits and overage reports in the store: the values both databases exchange with the gate, and their SQL
(one text for both, with ? marks; _personal.numbered gives PostgreSQL's).

A spend (a count that may go past the window's limit) takes the limit first, then the subject's credits, then
overage, in one transaction with the idempotency key, as a count does (see migration entitlements). The window
keeps the overage it has billed beside its usage (migration overage_billed), read and written in that
transaction: what a piece of work bills, and reports, is what the window's cap leaves (engine's billable).
"""
from __future__ import annotations

from dataclasses import dataclass

from plangate.engine._credits import ANY_GRANT, Grant, GrantSource, Spendable

GRANT_COLUMNS = "grant_id, meter, amount, remaining, priority, created_at, expires_at, source, note"
INSERT_GRANT = ("INSERT INTO credit_grants (subject, grant_id, meter, amount, remaining, priority, created_at, "
                "expires_at, source, note, actor) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (subject, grant_id) DO NOTHING")
# What a subject may still spend, and its latest tier grants (a rollover reads what they left).
GRANTS = (f"SELECT {GRANT_COLUMNS} FROM credit_grants WHERE subject = ? AND remaining > 0 AND "
          "(expires_at IS NULL OR expires_at > ?) UNION "
          f"SELECT {GRANT_COLUMNS} FROM credit_grants WHERE subject = ? AND source IN ('period', 'rollover') AND "
          "created_at = (SELECT max(created_at) FROM credit_grants AS latest WHERE latest.subject = ? AND "
          "latest.meter = credit_grants.meter AND latest.source IN ('period', 'rollover'))")
# A tier grant's expiry moved to where its window ends now (Spend.redates).
REDATE_GRANT = "UPDATE credit_grants SET expires_at = ? WHERE subject = ? AND grant_id = ?"
# The newest grants first, spent or not, for the subject's view.
GRANT = f"SELECT {GRANT_COLUMNS} FROM credit_grants WHERE subject = ? AND grant_id = ?"
RECENT_GRANTS = f"SELECT {GRANT_COLUMNS} FROM credit_grants WHERE subject = ? ORDER BY created_at DESC LIMIT ?"
REPORT_COLUMNS = ("identifier, subject, meter, event_name, value, at, stripe_customer, status, attempts, "
                  "next_attempt_at, last_error, sent_at")
INSERT_REPORT = ("INSERT INTO overage_reports (identifier, subject, meter, event_name, value, at, stripe_customer, "
                 "next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (identifier) DO NOTHING")
DUE_REPORTS = (f"SELECT {REPORT_COLUMNS} FROM overage_reports WHERE status = 'pending' AND next_attempt_at <= ? "
               "ORDER BY next_attempt_at LIMIT ?")
SUBJECT_REPORTS = f"SELECT {REPORT_COLUMNS} FROM overage_reports WHERE subject = ? ORDER BY at DESC LIMIT ?"
REPORTS_BY_STATUS = (f"SELECT {REPORT_COLUMNS} FROM overage_reports WHERE status = ? ORDER BY at DESC LIMIT ?")
REPORT_COUNTS = "SELECT status, count(*), coalesce(sum(value), 0) FROM overage_reports GROUP BY status"
UPDATE_REPORT = ("UPDATE overage_reports SET status = ?, attempts = ?, next_attempt_at = ?, last_error = ?, "
                 "sent_at = ?, stripe_customer = ? WHERE identifier = ?")
# What was sent per customer and meter event between two times (reconciliation compares it with Stripe's sums).
SENT_TOTALS = ("SELECT stripe_customer, event_name, sum(value) FROM overage_reports WHERE status = 'sent' AND "
               "at >= ? AND at < ? AND stripe_customer IS NOT NULL GROUP BY stripe_customer, event_name")


@dataclass(frozen=True, slots=True)
class Spend:
    """How a count may go past its window's limit. `ceiling`: the most the window may hold (the limit plus the
    overage a window allows; None: no ceiling, for work that already ran or unbounded overage). `cap`: the most
    overage the window bills (the quota's `up_to`; 0 without overage; None: unbounded); work that already ran
    is counted whole and bills what the cap leaves, a consume (a ceiling) that would bill less than its overage
    is refused. `grants`: the tier's grants of this window, made first when the subject has none yet. `report`:
    the Stripe meter event name overage is reported to (None: not reported), `report_id` this work's report
    identifier. `redates`: (grant id, expiry) of the tier's grants whose window the subject's billing period now
    says ends elsewhere, set first."""

    limit: int
    ceiling: int | None
    credits: bool = False
    which: Spendable = ANY_GRANT
    grants: tuple[Grant, ...] = ()
    report: str | None = None
    report_id: str | None = None
    customer: str | None = None
    redates: tuple[tuple[str, float], ...] = ()
    cap: int | None = 0


@dataclass(frozen=True, slots=True)
class OverageReport:
    """One piece of work's overage, to report to Stripe as a billing meter event (its identifier the event's)."""

    identifier: str
    subject: str
    meter: str
    event_name: str
    value: int
    at: float
    stripe_customer: str | None
    status: str = "pending"        # pending, sent, refused
    attempts: int = 0
    next_attempt_at: float = 0.0
    last_error: str | None = None
    sent_at: float | None = None

    def to_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.__slots__}


def grant_from_row(r) -> Grant:
    return Grant(r[0], r[1], int(r[2]), int(r[3]), int(r[4]), float(r[5]), None if r[6] is None else float(r[6]),
                 GrantSource(r[7]), r[8])


def grant_values(subject: str, g: Grant, actor: str | None) -> tuple:
    return (subject, g.id, g.meter, g.amount, g.remaining, g.priority, g.created, g.expires_at, g.source.value,
            g.note, actor)


def report_from_row(r) -> OverageReport:
    return OverageReport(r[0], r[1], r[2], r[3], int(r[4]), float(r[5]), r[6], r[7], int(r[8]), float(r[9]), r[10],
                         None if r[11] is None else float(r[11]))


def report_update(r: OverageReport) -> tuple:
    return (r.status, r.attempts, r.next_attempt_at, r.last_error, r.sent_at, r.stripe_customer, r.identifier)


def grants_args(subject: str, now: float) -> tuple:
    return (subject, now, subject, subject)
