-- When Stripe moved the subject into its tier (SubjectState.tier_since): a tier's credits carry over only from
-- windows that began since. Written with the state, in the transaction of the change of tier.
-- Existing subjects keep NULL, which reads as "before anything recorded": their next window carries over as it
-- did before this migration. Nothing stored dates a change of tier reliably (transitions record statuses; an
-- event's state_before names a renamed tier by its old name and dates an upgrade a moment after the period it
-- began), and a date later than the true one would take carried credits from subscribers who never changed tier.
ALTER TABLE subscriptions ADD COLUMN tier_since REAL;
