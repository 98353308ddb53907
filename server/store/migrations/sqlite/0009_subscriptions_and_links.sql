-- Several Stripe subscriptions per subject, and events linked by the charge or payment intent they name.

-- JSON: what the subject's fold knows of each of its Stripe subscriptions (engine.Subscription), the one its
-- status follows among them. stripe_subscription keeps the followed one's id.
ALTER TABLE subscriptions ADD COLUMN stripe_subscriptions TEXT;

-- Stripe ids seen in a subject's events besides its customer: every subscription, charge and payment intent.
-- A later event naming only one of them (a dispute names its charge) finds its subject here.
CREATE TABLE stripe_links (
    stripe_id TEXT PRIMARY KEY,
    subject   TEXT NOT NULL
);
INSERT OR IGNORE INTO stripe_links (stripe_id, subject)
    SELECT stripe_subscription, subject FROM subscriptions WHERE stripe_subscription IS NOT NULL;

-- The charge (else the payment intent) a pending event names: it is adopted when an event links that id.
ALTER TABLE subscription_events ADD COLUMN stripe_payment TEXT;
CREATE INDEX subscription_events_pending_by_payment ON subscription_events (stripe_payment)
    WHERE outcome = 'pending';
