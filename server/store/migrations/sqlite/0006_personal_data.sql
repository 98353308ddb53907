-- What the store keeps about people. A Stripe event's raw payload is kept while Stripe may still deliver events
-- that fold it again (PLANGATE_EVENT_PAYLOAD_RETENTION_DAYS); then the retention job keeps only the facts the
-- gate reads and stamps reduced_at. Events stored before this migration are reduced by the step that follows it
-- (`plangate migrate`, or the gate's start). An erased subject is remembered by its pseudonym alone.

ALTER TABLE subscription_events ADD COLUMN reduced_at REAL;
CREATE INDEX subscription_events_unreduced ON subscription_events (created, event_id) WHERE reduced_at IS NULL;

CREATE TABLE erasures (
    pseudonym             TEXT PRIMARY KEY,    -- HMAC-SHA256 of the erased subject id (PLANGATE_PSEUDONYM_SECRET)
    erased_at             REAL NOT NULL,
    actor                 TEXT NOT NULL,
    stripe_ids_dropped_at REAL                 -- NULL while a live subscription keeps its Stripe ids
);
