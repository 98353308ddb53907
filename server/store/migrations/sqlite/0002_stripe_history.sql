-- Stripe webhooks: a subject's event history as a fold, events waiting for their subject,
-- paid-through dates for grace, and what reconciliation needs.

ALTER TABLE subscriptions ADD COLUMN paid_through REAL;
ALTER TABLE subscriptions ADD COLUMN stripe_watermark REAL;   -- created of the newest Stripe event folded in
ALTER TABLE subscriptions ADD COLUMN confirmed_at REAL;       -- when Stripe last told us about the subject
CREATE INDEX subscriptions_by_status ON subscriptions (status, confirmed_at);

ALTER TABLE subscription_events ADD COLUMN reason TEXT;
ALTER TABLE subscription_events ADD COLUMN stripe_customer TEXT;
ALTER TABLE subscription_events ADD COLUMN stripe_subscription TEXT;
ALTER TABLE subscription_events ADD COLUMN state_before TEXT;  -- JSON: the subject's state before this event in its fold
CREATE INDEX subscription_events_pending_by_customer ON subscription_events (stripe_customer)
    WHERE outcome = 'pending';
CREATE INDEX subscription_events_pending_by_subscription ON subscription_events (stripe_subscription)
    WHERE outcome = 'pending';

ALTER TABLE payments ADD COLUMN updated_created REAL;          -- created of the event that last set the row
