-- The first schema of the gate's store (PostgreSQL). Same tables as the SQLite migration of the same
-- number; times are Unix seconds (double precision), as there.

CREATE TABLE subscriptions (
    subject             TEXT PRIMARY KEY,
    status              TEXT NOT NULL,
    tier                TEXT,
    since               DOUBLE PRECISION NOT NULL,
    timer_due           DOUBLE PRECISION,
    period_start        DOUBLE PRECISION,
    period_end          DOUBLE PRECISION,
    plan_version        TEXT NOT NULL,
    stripe_customer     TEXT,
    stripe_subscription TEXT,
    version             BIGINT NOT NULL,
    updated_at          DOUBLE PRECISION NOT NULL
);
CREATE INDEX subscriptions_by_timer ON subscriptions (timer_due) WHERE timer_due IS NOT NULL;
CREATE INDEX subscriptions_by_customer ON subscriptions (stripe_customer) WHERE stripe_customer IS NOT NULL;
CREATE INDEX subscriptions_by_subscription ON subscriptions (stripe_subscription)
    WHERE stripe_subscription IS NOT NULL;

CREATE TABLE subscription_events (
    event_id    TEXT PRIMARY KEY,
    type        TEXT NOT NULL,
    created     DOUBLE PRECISION NOT NULL,
    subject     TEXT,
    payload     TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    received_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX subscription_events_by_subject ON subscription_events (subject, created);

CREATE TABLE quota_usage (
    subject      TEXT NOT NULL REFERENCES subscriptions (subject),
    meter        TEXT NOT NULL,
    window_start BIGINT NOT NULL,
    used         BIGINT NOT NULL CHECK (used >= 0),
    PRIMARY KEY (subject, meter, window_start)
);
CREATE INDEX quota_usage_by_window ON quota_usage (window_start);

CREATE TABLE usage_keys (
    key          TEXT PRIMARY KEY,
    subject      TEXT NOT NULL,
    meter        TEXT NOT NULL,
    amount       BIGINT NOT NULL,
    window_start BIGINT NOT NULL,
    used_after   BIGINT NOT NULL,
    created_at   DOUBLE PRECISION NOT NULL
);
CREATE INDEX usage_keys_by_age ON usage_keys (created_at);

CREATE TABLE payments (
    invoice_id          TEXT PRIMARY KEY,
    subject             TEXT,
    stripe_customer     TEXT,
    stripe_subscription TEXT,
    status              TEXT NOT NULL,
    amount              BIGINT,
    currency            TEXT,
    event_id            TEXT,
    created             DOUBLE PRECISION NOT NULL
);
CREATE INDEX payments_by_subject ON payments (subject, created);

CREATE TABLE transitions (
    id           BIGSERIAL PRIMARY KEY,
    subject      TEXT NOT NULL REFERENCES subscriptions (subject),
    from_status  TEXT,
    to_status    TEXT NOT NULL,
    trigger      TEXT NOT NULL,
    cause_id     TEXT,
    reason       TEXT NOT NULL,
    actor        TEXT,
    at           DOUBLE PRECISION NOT NULL,
    plan_version TEXT NOT NULL
);
CREATE INDEX transitions_by_subject ON transitions (subject, id);
