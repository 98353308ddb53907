-- Overage reports are kept (they say what was billed), one a piece of overage work, so the table only grows.
-- Reconciliation's day of sent reports (every 15 minutes), GET /v1/overage's newest of a status and a resend of
-- refused ones read them by status and time: through this index, not the whole table.
CREATE INDEX IF NOT EXISTS overage_reports_by_status ON overage_reports (status, at);
