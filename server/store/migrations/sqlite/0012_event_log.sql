-- The webhook log (GET /v1/events, the console's webhook page): the newest events first, of any subject or none,
-- a page at a time after a (created, event_id) key, and those of one outcome (pending: waiting for a link).
CREATE INDEX IF NOT EXISTS subscription_events_by_time ON subscription_events (created, event_id);
CREATE INDEX IF NOT EXISTS subscription_events_by_outcome ON subscription_events (outcome, created, event_id);
