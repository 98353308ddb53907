-- Counts a gate stored as floats before the usage ceiling (migration 22): SQLite turns a sum past 2**63 - 1 into a
-- REAL, and the gate then answered such a window's usage as a float (9.2233720368547758e18), not the whole number
-- its API promises, and carried it into the idempotency key's answer and the overage beside it. Each becomes the
-- whole number it stood for, at most the ceiling, 2**62 (4611686018427387904; USAGE_CEILING in
-- server/store/_base.py): the window stays as full as it was, and a count past it is refused (422 usage_ceiling).
-- A whole number is left as it is (min() and CAST change none).

UPDATE quota_usage SET used = CAST(min(used, 4611686018427387904) AS INTEGER),
                       billed = CAST(min(billed, 4611686018427387904) AS INTEGER)
WHERE typeof(used) = 'real' OR typeof(billed) = 'real';
UPDATE usage_keys SET used_after = CAST(min(used_after, 4611686018427387904) AS INTEGER),
                      overage = CAST(min(overage, 4611686018427387904) AS INTEGER)
WHERE typeof(used_after) = 'real' OR typeof(overage) = 'real';
UPDATE overage_reports SET value = CAST(min(value, 4611686018427387904) AS INTEGER) WHERE typeof(value) = 'real';
