-- A tier's period or rollover grant keeps the subject's tier_since when it was made: the stay in the tier it
-- belongs to. A window's grant is made by the tier the subject has when it is first needed, so after a change of
-- tier within a window that window's grant may be the new tier's; the new tier then carries it over into its next
-- window, as it carries its own. NULL: any other grant, or a tier grant made before this migration (carried as
-- before: only from windows that began since the subject entered its tier).
ALTER TABLE credit_grants ADD COLUMN tier_since REAL;
