-- Entitlements beyond one quota (issue 19): seats, add-ons and traits on the subject's row, credit grants, and
-- overage reported to Stripe.

-- The followed subscription's quantity of its tier's item (seats), the add-ons its live subscriptions buy
-- (JSON: [[name, quantity], ...]) and the numbers set on the subject through the API (JSON: [[name, value], ...]).
ALTER TABLE subscriptions ADD COLUMN quantity INTEGER;
ALTER TABLE subscriptions ADD COLUMN addons TEXT;
ALTER TABLE subscriptions ADD COLUMN traits TEXT;

-- Credits: each grant of a subject in a meter's unit, what is left of it, and where it came from. The id is the
-- Checkout session's and line's for a purchase, the window's for a tier's grant, the caller's key (or a new id)
-- for an admin's: the same grant is never made twice.
CREATE TABLE credit_grants (
    subject     TEXT NOT NULL,
    grant_id    TEXT NOT NULL,
    meter       TEXT NOT NULL,
    amount      INTEGER NOT NULL,
    remaining   INTEGER NOT NULL,
    priority    INTEGER NOT NULL,
    created_at  REAL NOT NULL,
    expires_at  REAL,
    source      TEXT NOT NULL,          -- purchase, admin, period, rollover
    note        TEXT NOT NULL DEFAULT '',
    actor       TEXT,                   -- who granted it (admin), or the event that did (purchase)
    PRIMARY KEY (subject, grant_id)
);
CREATE INDEX credit_grants_spendable ON credit_grants (subject, meter, priority) WHERE remaining > 0;

-- What a counted piece of work spent of the credits, and how much of it was overage: a repeat of its key answers
-- the same.
ALTER TABLE usage_keys ADD COLUMN credits_used INTEGER NOT NULL DEFAULT 0;
ALTER TABLE usage_keys ADD COLUMN overage INTEGER NOT NULL DEFAULT 0;

-- Overage to report to Stripe as billing meter events, one row per counted piece of work (its identifier is the
-- meter event's, so Stripe counts a retried report once). A report Stripe refuses stays, `refused`, with why.
CREATE TABLE overage_reports (
    identifier      TEXT PRIMARY KEY,
    subject         TEXT NOT NULL,
    meter           TEXT NOT NULL,
    event_name      TEXT NOT NULL,
    value           INTEGER NOT NULL,
    at              REAL NOT NULL,      -- when the work was counted: the meter event's timestamp
    stripe_customer TEXT,
    status          TEXT NOT NULL DEFAULT 'pending',   -- pending, sent, refused
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error      TEXT,
    sent_at         REAL
);
CREATE INDEX overage_reports_due ON overage_reports (next_attempt_at) WHERE status = 'pending';
CREATE INDEX overage_reports_by_subject ON overage_reports (subject, at);
