-- A subject's balance of a meter says at most 2**62 (4611686018427387904, MOST in engine/_decision.py: as much as a
-- window counts). Its grants may hold more between them: each holds at most 10**15, and 9,224 of those pass
-- 2**63 - 1, where the sum's cast to bigint failed, and with it every consume of the subject that reached its
-- credits (a 503, taken for the store being down). The grants are still spent one by one; only what the balance
-- says stops there.
--
-- The function as migration entitlements made it, the sum bounded; same signature and result, so it replaces
-- itself in place.

CREATE OR REPLACE FUNCTION plangate_balance(p_subject TEXT, p_meter TEXT, p_now DOUBLE PRECISION,
                                            p_not_before DOUBLE PRECISION, p_tier_grants BOOLEAN)
RETURNS BIGINT LANGUAGE sql STABLE AS $$
    SELECT LEAST(coalesce(sum(c.remaining), 0), 4611686018427387904)::BIGINT FROM credit_grants AS c
    WHERE c.subject = p_subject AND c.meter = p_meter AND c.remaining > 0
      AND (c.expires_at IS NULL OR c.expires_at > p_now)
      AND (p_not_before IS NULL OR c.created_at >= p_not_before)
      AND (p_tier_grants OR c.source NOT IN ('period', 'rollover'))
$$;
