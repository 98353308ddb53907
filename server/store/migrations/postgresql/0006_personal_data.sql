-- What the store keeps about people (the SQLite migration of this number says why). Same tables and columns.

ALTER TABLE subscription_events ADD COLUMN reduced_at DOUBLE PRECISION;
CREATE INDEX subscription_events_unreduced ON subscription_events (created, event_id) WHERE reduced_at IS NULL;

CREATE TABLE erasures (
    pseudonym             TEXT PRIMARY KEY,
    erased_at             DOUBLE PRECISION NOT NULL,
    actor                 TEXT NOT NULL,
    stripe_ids_dropped_at DOUBLE PRECISION
);
