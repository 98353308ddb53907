-- The subscription's dates a status timer can be anchored to (expires_at: trial_end + 2h, cancel_at, ...;
-- the period's end is period_end): kept with the subject so that a status entered later, or a date Stripe
-- moves, sets the timer from them.

ALTER TABLE subscriptions ADD COLUMN trial_end REAL;
ALTER TABLE subscriptions ADD COLUMN cancel_at REAL;
