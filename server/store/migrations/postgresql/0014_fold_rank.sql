-- An update's place among its subscription's updates of the same second, as the fold took them (0 first): Stripe's
-- event ids are not ordered, so the fold orders such updates by their previous_attributes.status chain, and a fold
-- that runs again must start before the first of them. NULL: any other event, or one folded before this column.
ALTER TABLE subscription_events ADD COLUMN fold_rank INTEGER;
