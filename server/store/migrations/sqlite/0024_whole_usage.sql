-- Counts a gate stored as floats before the usage ceiling (migration 22): SQLite turns a sum past 2**63 - 1 into a
-- REAL, and the gate then answered such a window's usage as a float (9.2233720368547758e18), not the whole number
-- its API promises, and carried it into the idempotency key's answer and the overage beside it. Each becomes the
-- whole number it stood for, at most the ceiling, 2**62 (4611686018427387904; USAGE_CEILING in
-- server/store/_base.py): the window stays as full as it was, and a count past it is refused (422 usage_ceiling).

UPDATE quota_usage SET used = CASE WHEN used >= 4611686018427387904 THEN 4611686018427387904
                                   ELSE CAST(used AS INTEGER) END WHERE typeof(used) = 'real';
UPDATE quota_usage SET billed = CASE WHEN billed >= 4611686018427387904 THEN 4611686018427387904
                                     ELSE CAST(billed AS INTEGER) END WHERE typeof(billed) = 'real';
UPDATE usage_keys SET used_after = CASE WHEN used_after >= 4611686018427387904 THEN 4611686018427387904
                                        ELSE CAST(used_after AS INTEGER) END WHERE typeof(used_after) = 'real';
UPDATE usage_keys SET overage = CASE WHEN overage >= 4611686018427387904 THEN 4611686018427387904
                                     ELSE CAST(overage AS INTEGER) END WHERE typeof(overage) = 'real';
UPDATE overage_reports SET value = CASE WHEN value >= 4611686018427387904 THEN 4611686018427387904
                                        ELSE CAST(value AS INTEGER) END WHERE typeof(value) = 'real';
