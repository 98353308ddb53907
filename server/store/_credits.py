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
from plangate.engine._reversals import MoneyBack, ReversalKind, settle

GRANT_COLUMNS = ("grant_id, meter, amount, remaining, priority, created_at, expires_at, source, note, "
                 "stripe_payment_intent, paid, tier_since")
INSERT_GRANT = ("INSERT INTO credit_grants (subject, grant_id, meter, amount, remaining, priority, created_at, "
                "expires_at, source, note, actor, stripe_payment_intent, paid, tier_since) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (subject, grant_id) DO NOTHING")
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
# Credits taken back (engine._reversals): the facts of money back (grant_id ''), and what each took of a grant.
REVERSAL_COLUMNS = ("reversal_id, grant_id, kind, payment_intent, charge, amount, paid, units, taken, event_id, "
                    "created_at")
INSERT_REVERSAL = (f"INSERT INTO credit_reversals (subject, {REVERSAL_COLUMNS}) VALUES "
                   "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (subject, reversal_id, grant_id) DO NOTHING")
# A payment's grants (locked on PostgreSQL: a spend changes `remaining` beside) and all that came back of it.
PAYMENT_GRANTS = ("SELECT grant_id, amount, remaining, paid FROM credit_grants WHERE subject = ? AND "
                  "stripe_payment_intent = ? ORDER BY grant_id")
PAYMENT_REVERSALS = f"SELECT {REVERSAL_COLUMNS} FROM credit_reversals WHERE subject = ? AND payment_intent = ?"
TAKE_BACK = "UPDATE credit_grants SET remaining = remaining - ? WHERE subject = ? AND grant_id = ?"
# What was taken back of the subject's grants, for its view (the newest first).
SUBJECT_REVERSALS = (f"SELECT {REVERSAL_COLUMNS} FROM credit_reversals WHERE subject = ? AND grant_id <> '' "
                     "ORDER BY created_at DESC, reversal_id LIMIT ?")
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
# Per (customer, event name) of the work counted in [start, end): the total Stripe has surely summed (of the whole
# minutes before the first report that reached it at or after `settled`; all of it when none did), and when that
# report's work was counted (NULL: none). {minute} is the dialect's whole minute of a time: SQLite truncates a
# CAST, PostgreSQL rounds one (floor there).
SENT_TOTALS = ("SELECT r.stripe_customer, r.event_name, "
               "sum(CASE WHEN g.late IS NULL OR {minute_r} < {minute_g} THEN r.value ELSE 0 END), g.late "
               "FROM overage_reports AS r JOIN (SELECT stripe_customer, event_name, "
               "min(CASE WHEN sent_at >= ? THEN at END) AS late FROM overage_reports WHERE status = 'sent' AND "
               "at >= ? AND at < ? AND stripe_customer IS NOT NULL GROUP BY stripe_customer, event_name) AS g "
               "ON g.stripe_customer = r.stripe_customer AND g.event_name = r.event_name "
               "WHERE r.status = 'sent' AND r.at >= ? AND r.at < ? GROUP BY r.stripe_customer, r.event_name, g.late")


def sent_totals(minute: str) -> str:
    """SENT_TOTALS with `minute` ("CAST({} / 60 AS INTEGER)", "floor({} / 60)") for the dialect."""
    return SENT_TOTALS.format(minute_r=minute.format("r.at"), minute_g=minute.format("g.late"))


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


@dataclass(frozen=True, slots=True)
class Reversal:
    """What one refund or lost dispute took back of one grant, as the subject's view shows it."""

    id: str
    grant_id: str
    kind: str
    payment_intent: str
    charge: str | None
    amount: int         # money back, as the fact said it
    units: int          # the credits it accounts for
    taken: int          # of them, what was left to take
    event_id: str
    created: float

    def to_dict(self) -> dict:
        return {"id": self.id, "kind": self.kind, "payment_intent": self.payment_intent, "charge": self.charge,
                "amount": self.amount, "units": self.units, "taken": self.taken, "event": self.event_id,
                "created": self.created}


def grant_from_row(r) -> Grant:
    return Grant(r[0], r[1], int(r[2]), int(r[3]), int(r[4]), float(r[5]), None if r[6] is None else float(r[6]),
                 GrantSource(r[7]), r[8], r[9], None if r[10] is None else int(r[10]),
                 None if r[11] is None else float(r[11]))


def grant_values(subject: str, g: Grant, actor: str | None) -> tuple:
    return (subject, g.id, g.meter, g.amount, g.remaining, g.priority, g.created, g.expires_at, g.source.value,
            g.note, actor, g.payment_intent, g.paid, g.tier_since)


def reversal_from_row(r) -> Reversal:
    return Reversal(r[0], r[1], r[2], r[3], r[4], int(r[5]), int(r[7]), int(r[8]), r[9], float(r[10]))


def fact_values(subject: str, f: MoneyBack) -> tuple:
    """INSERT_REVERSAL's values of a fact of money back (grant_id '')."""
    return _reversal_values(subject, f, "", 0, 0)


def _reversal_values(subject: str, f: MoneyBack, grant_id: str, units: int, taken: int) -> tuple:
    return (subject, f.id, grant_id, f.kind.value, f.payment_intent, f.charge, f.amount, f.paid, units, taken,
            f.event_id, f.created)


def reversal_payments(reversals: tuple[MoneyBack, ...], grants: tuple[Grant, ...]) -> list[str]:
    """The payments whose grants a commit settles: those money came back of, and those its grants were bought
    with (money that came back before the grant's event arrived takes from it as it is made)."""
    return sorted({f.payment_intent for f in reversals} | {g.payment_intent for g in grants if g.payment_intent})


def settle_payment(subject: str, payment_intent: str, grants, rows) -> tuple[list[tuple], list[tuple]]:
    """What a payment's facts of money back take of its grants that was not taken yet: the INSERT_REVERSAL
    values and the TAKE_BACK values. `grants`: PAYMENT_GRANTS' rows; `rows`: PAYMENT_REVERSALS' rows."""
    facts = [MoneyBack(r[0], ReversalKind(r[2]), payment_intent, r[4], int(r[5]), float(r[10]), r[9],
                       None if r[6] is None else int(r[6])) for r in rows if r[1] == ""]
    inserts, takes = [], []
    for grant_id, amount, remaining, paid in grants:
        recorded = {r[0]: (int(r[7]), int(r[8])) for r in rows if r[1] == grant_id}
        for t in settle(grant_id, int(amount), int(remaining), None if paid is None else int(paid), facts,
                        recorded):
            inserts.append(_reversal_values(subject, t.fact, grant_id, t.units, t.taken))
            if t.taken:
                takes.append((t.taken, subject, grant_id))
    return inserts, takes


RESEND_FILTERS = ("subject", "event_name", "identifier")
# How a report refused for an idempotency key Stripe had seen with other parameters is told (meter_events writes
# it): that request may have been recorded, so such a report is never resent (Stripe's identifiers dedupe for 24
# hours only).
KEY_CONFLICT = "Stripe refused it: its idempotency key was used with other parameters"


def _narrowed(filters: dict[str, str]) -> str:
    if not filters.keys() <= set(RESEND_FILTERS):
        raise ValueError(f"no such filter: {sorted(filters.keys() - set(RESEND_FILTERS))}")
    return "".join(f" AND {column} = ?" for column in filters)


def resend_refused(filters: dict[str, str], since: float, now: float, note: str, limit: int) -> tuple[str, tuple]:
    """A person's word that refused reports go again, narrowed by filters (subject, event_name, identifier ->
    value): (the UPDATE, its parameters) putting at most `limit` of those counted since `since` back to pending, due
    at `now` with `note` as their last error, but for key conflicts. Attempts are kept: the next attempt's
    idempotency key is a new one (meter_events)."""
    return (f"UPDATE overage_reports SET status = 'pending', next_attempt_at = ?, last_error = ? WHERE identifier IN "
            f"(SELECT identifier FROM overage_reports WHERE status = 'refused' AND at >= ? AND "
            f"coalesce(last_error, '') NOT LIKE ?{_narrowed(filters)} LIMIT ?)",
            (now, note, since, KEY_CONFLICT + "%", *filters.values(), limit))


def refused_kept(filters: dict[str, str], since: float) -> tuple[str, tuple]:
    """(The SELECT, its parameters) of the refused reports resend_refused leaves, narrowed as it is: (counted
    before `since`, key conflicts since)."""
    return (f"SELECT coalesce(sum(CASE WHEN at < ? THEN 1 ELSE 0 END), 0), "
            f"coalesce(sum(CASE WHEN at >= ? AND last_error LIKE ? THEN 1 ELSE 0 END), 0) "
            f"FROM overage_reports WHERE status = 'refused'{_narrowed(filters)}",
            (since, since, KEY_CONFLICT + "%", *filters.values()))


def report_from_row(r) -> OverageReport:
    return OverageReport(r[0], r[1], r[2], r[3], int(r[4]), float(r[5]), r[6], r[7], int(r[8]), float(r[9]), r[10],
                         None if r[11] is None else float(r[11]))


def report_update(r: OverageReport) -> tuple:
    return (r.status, r.attempts, r.next_attempt_at, r.last_error, r.sent_at, r.stripe_customer, r.identifier)


def grants_args(subject: str, now: float) -> tuple:
    return (subject, now, subject, subject)
