-- Stripe webhooks: a subject's event history as a fold, events waiting for their subject,
-- paid-through dates for grace, and what reconciliation needs.

ALTER TABLE subscriptions ADD COLUMN paid_through DOUBLE PRECISION;
ALTER TABLE subscriptions ADD COLUMN stripe_watermark DOUBLE PRECISION;   -- created of the newest Stripe event folded in
ALTER TABLE subscriptions ADD COLUMN confirmed_at DOUBLE PRECISION;       -- when Stripe last told us about the subject
CREATE INDEX subscriptions_by_status ON subscriptions (status, confirmed_at);

ALTER TABLE subscription_events ADD COLUMN reason TEXT;
ALTER TABLE subscription_events ADD COLUMN stripe_customer TEXT;
ALTER TABLE subscription_events ADD COLUMN stripe_subscription TEXT;
ALTER TABLE subscription_events ADD COLUMN state_before TEXT;  -- JSON: the subject's state before this event in its fold
CREATE INDEX subscription_events_pending_by_customer ON subscription_events (stripe_customer)
    WHERE outcome = 'pending';
CREATE INDEX subscription_events_pending_by_subscription ON subscription_events (stripe_subscription)
    WHERE outcome = 'pending';

ALTER TABLE payments ADD COLUMN updated_created DOUBLE PRECISION;          -- created of the event that last set the row
