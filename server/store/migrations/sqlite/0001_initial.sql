-- The first schema of the gate's store. Times are Unix seconds.

CREATE TABLE subscriptions (
    subject             TEXT PRIMARY KEY,
    status              TEXT NOT NULL,
    tier                TEXT,
    since               REAL NOT NULL,
    timer_due           REAL,
    period_start        REAL,
    period_end          REAL,
    plan_version        TEXT NOT NULL,
    stripe_customer     TEXT,
    stripe_subscription TEXT,
    version             INTEGER NOT NULL,      -- optimistic concurrency: bumped by every write
    updated_at          REAL NOT NULL
);
CREATE INDEX subscriptions_by_timer ON subscriptions (timer_due) WHERE timer_due IS NOT NULL;
CREATE INDEX subscriptions_by_customer ON subscriptions (stripe_customer) WHERE stripe_customer IS NOT NULL;
CREATE INDEX subscriptions_by_subscription ON subscriptions (stripe_subscription) WHERE stripe_subscription IS NOT NULL;

CREATE TABLE subscription_events (
    event_id    TEXT PRIMARY KEY,              -- Stripe's evt_ id: a repeat delivery is a conflict here
    type        TEXT NOT NULL,
    created     REAL NOT NULL,
    subject     TEXT,
    payload     TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    received_at REAL NOT NULL
);
CREATE INDEX subscription_events_by_subject ON subscription_events (subject, created);

CREATE TABLE quota_usage (
    subject      TEXT NOT NULL REFERENCES subscriptions (subject),
    meter        TEXT NOT NULL,
    window_start INTEGER NOT NULL,             -- a new window is a new row: resets need no job
    used         INTEGER NOT NULL CHECK (used >= 0),
    PRIMARY KEY (subject, meter, window_start)
) WITHOUT ROWID;
CREATE INDEX quota_usage_by_window ON quota_usage (window_start);

CREATE TABLE usage_keys (
    key          TEXT PRIMARY KEY,             -- the caller's idempotency key
    subject      TEXT NOT NULL,
    meter        TEXT NOT NULL,
    amount       INTEGER NOT NULL,
    window_start INTEGER NOT NULL,
    used_after   INTEGER NOT NULL,
    created_at   REAL NOT NULL
);
CREATE INDEX usage_keys_by_age ON usage_keys (created_at);

CREATE TABLE payments (
    invoice_id          TEXT PRIMARY KEY,
    subject             TEXT,
    stripe_customer     TEXT,
    stripe_subscription TEXT,
    status              TEXT NOT NULL,
    amount              INTEGER,
    currency            TEXT,
    event_id            TEXT,
    created             REAL NOT NULL
);
CREATE INDEX payments_by_subject ON payments (subject, created);

CREATE TABLE transitions (
    id           INTEGER PRIMARY KEY,
    subject      TEXT NOT NULL REFERENCES subscriptions (subject),
    from_status  TEXT,
    to_status    TEXT NOT NULL,
    trigger      TEXT NOT NULL,
    cause_id     TEXT,
    reason       TEXT NOT NULL,
    actor        TEXT,
    at           REAL NOT NULL,
    plan_version TEXT NOT NULL
);
CREATE INDEX transitions_by_subject ON transitions (subject, id);
