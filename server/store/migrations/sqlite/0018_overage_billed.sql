-- The overage each window has billed (reported to Stripe, or to be), beside its usage: a window bills at most its
-- quota's `overage: {up_to}`, and its usage past the limit does not say how much it billed once the limit changed
-- within it (seats, a trait, a plan's deploy) or once work that already ran was counted past the cap. A spend reads
-- and writes it in its own transaction.
ALTER TABLE quota_usage ADD COLUMN billed INTEGER NOT NULL DEFAULT 0;

-- Windows counted before: the overage reports of the subject's meter made in the window, up to the start of the
-- subject's next window of the meter (a report is made with its count, so its time is in its window).
UPDATE quota_usage SET billed = (
    SELECT coalesce(sum(r.value), 0) FROM overage_reports AS r
    WHERE r.subject = quota_usage.subject AND r.meter = quota_usage.meter AND r.at >= quota_usage.window_start
      AND NOT EXISTS (SELECT 1 FROM quota_usage AS n WHERE n.subject = quota_usage.subject
                      AND n.meter = quota_usage.meter AND n.window_start > quota_usage.window_start
                      AND n.window_start <= r.at))
WHERE EXISTS (SELECT 1 FROM overage_reports AS r WHERE r.subject = quota_usage.subject
              AND r.meter = quota_usage.meter AND r.at >= quota_usage.window_start);
