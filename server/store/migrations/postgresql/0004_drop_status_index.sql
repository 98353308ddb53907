-- subscriptions_by_status (status, confirmed_at) served no query: the reconciliation's search for doubtful
-- subjects filters on the Stripe subscription and on coalesce(confirmed_at, 0), an OR whose second arm no
-- index on (status, confirmed_at) can answer. Every status change paid for it.

DROP INDEX IF EXISTS subscriptions_by_status;
