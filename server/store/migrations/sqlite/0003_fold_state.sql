-- The subject's state as its Stripe events alone make it (before timers and admin changes since the
-- newest event): where the fold of a later event starts, so that an event created before a timer's
-- deadline but delivered after the timer fired is folded in before it.

ALTER TABLE subscriptions ADD COLUMN fold_state TEXT;
