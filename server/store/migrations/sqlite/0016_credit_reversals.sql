-- Credits taken back when the payment that bought them is refunded or its dispute lost.

-- The payment intent that paid a bought grant (the Checkout's, or its first invoice's), by which refunds and
-- disputes of that payment, which name it, find the grant; and what the Checkout charged in all (in the smallest
-- currency unit), the whole a refund is a share of. Grants bought before this migration have neither.
ALTER TABLE credit_grants ADD COLUMN stripe_payment_intent TEXT;
ALTER TABLE credit_grants ADD COLUMN paid INTEGER;
CREATE INDEX credit_grants_by_payment_intent ON credit_grants (subject, stripe_payment_intent)
    WHERE stripe_payment_intent IS NOT NULL;

-- Money of a payment that came back, one row per fact (a refund, a lost dispute, a charge.refunded event) with
-- grant_id '' (the fact as Stripe said it: made once, however often it is delivered), and one per grant of that
-- payment it took credits from: `units` the share of the grant it accounts for, `taken` of them what was left to
-- take (spent credits stay spent). The same fact never takes twice from one grant.
CREATE TABLE credit_reversals (
    subject         TEXT NOT NULL,
    reversal_id     TEXT NOT NULL,          -- the refund's (re_), the dispute's (dp_), or the charge.refunded event's
    grant_id        TEXT NOT NULL,          -- '' for the fact itself
    kind            TEXT NOT NULL,          -- refund, charge_refunded, dispute_lost
    payment_intent  TEXT NOT NULL,
    charge          TEXT,
    amount          INTEGER NOT NULL,       -- money back (a charge's amount_refunded: all its refunds so far)
    paid            INTEGER,                -- what the charge was of, when the event says
    units           INTEGER NOT NULL DEFAULT 0,
    taken           INTEGER NOT NULL DEFAULT 0,
    event_id        TEXT NOT NULL,
    created_at      REAL NOT NULL,                 -- the event's
    PRIMARY KEY (subject, reversal_id, grant_id)
);
CREATE INDEX credit_reversals_by_payment ON credit_reversals (subject, payment_intent);
