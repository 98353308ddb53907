-- plangate_spend refused a consume paid whole by credits when the window's usage was already past its ceiling (the
-- limit plus the overage cap; the limit for a rule without overage): usage counted by /v1/usage, which no ceiling
-- holds, took it there. The work added nothing to the window's usage, yet nothing was counted nor spent, and the
-- gate answered it allowed. Now only work that goes past the limit unpaid (overage) is held to the ceiling.
--
-- And a tier's grant is spent (and counted in a balance) only from its window's start, and no longer once a later
-- window's are made (what it held then was carried into it): a request of a window's last moments, decided after a
-- request of the next window had made that window's grants, spent the new grant, or the old one's remainder a second
-- time.
--
-- plangate_spend and plangate_balance are 0022's and 0023's but for those tests (one function, plangate_tier_open,
-- says the tier's); same signatures and results.

-- Whether a tier's grant (period or rollover) made at p_created may be spent at p_now: the subject's status takes
-- the tier's credits, the grant's window has begun, and no later window's grants are made yet.
CREATE OR REPLACE FUNCTION plangate_tier_open(p_subject TEXT, p_meter TEXT, p_now DOUBLE PRECISION,
                                              p_tier_grants BOOLEAN, p_created DOUBLE PRECISION)
RETURNS BOOLEAN LANGUAGE sql STABLE AS $$
    SELECT p_tier_grants AND p_created <= p_now AND NOT EXISTS (
        SELECT 1 FROM credit_grants AS n WHERE n.subject = p_subject AND n.meter = p_meter
                                           AND n.source IN ('period', 'rollover') AND n.created_at > p_now)
$$;

CREATE OR REPLACE FUNCTION plangate_balance(p_subject TEXT, p_meter TEXT, p_now DOUBLE PRECISION,
                                            p_not_before DOUBLE PRECISION, p_tier_grants BOOLEAN)
RETURNS BIGINT LANGUAGE sql STABLE AS $$
    SELECT LEAST(coalesce(sum(c.remaining), 0), 4611686018427387904)::BIGINT FROM credit_grants AS c
    WHERE c.subject = p_subject AND c.meter = p_meter AND c.remaining > 0
      AND (c.expires_at IS NULL OR c.expires_at > p_now)
      AND (p_not_before IS NULL OR c.created_at >= p_not_before)
      AND (c.source NOT IN ('period', 'rollover') OR plangate_tier_open(p_subject, p_meter, p_now, p_tier_grants,
                                                                        c.created_at))
$$;

CREATE OR REPLACE FUNCTION plangate_spend(p_subject TEXT, p_meter TEXT, p_window BIGINT, p_amount BIGINT,
                                          p_limit BIGINT, p_ceiling BIGINT, p_cap BIGINT, p_credits BOOLEAN,
                                          p_not_before DOUBLE PRECISION, p_tier_grants BOOLEAN, p_key TEXT,
                                          p_now DOUBLE PRECISION, p_version BIGINT, p_report TEXT,
                                          p_report_id TEXT, p_customer TEXT, p_announce BOOLEAN)
RETURNS TABLE (outcome TEXT, used BIGINT, seen_subject TEXT, seen_meter TEXT, seen_amount BIGINT,
               spent BIGINT, over BIGINT, balance BIGINT, billed BIGINT)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_outcome TEXT;
    v_used BIGINT;
    v_billed BIGINT;
    v_allow BIGINT;
    v_rest BIGINT;
    v_spent BIGINT := 0;
    v_over BIGINT;
    v_bill BIGINT;
    v_take BIGINT;
    v_balance BIGINT;
    g RECORD;
BEGIN
    BEGIN
        IF p_key IS NOT NULL THEN
            INSERT INTO usage_keys AS k (key, subject, meter, amount, window_start, used_after, created_at)
            VALUES (p_key, p_subject, p_meter, p_amount, p_window, 0, p_now) ON CONFLICT (key) DO NOTHING;
            IF NOT FOUND THEN
                RETURN QUERY SELECT 'repeat'::TEXT, k.used_after, k.subject, k.meter, k.amount, k.credits_used,
                                    k.overage, NULL::BIGINT, NULL::BIGINT
                             FROM usage_keys AS k WHERE k.subject = p_subject AND k.key = p_key;
                IF NOT FOUND THEN
                    RETURN QUERY SELECT 'repeat'::TEXT, k.used_after, k.subject, k.meter, k.amount, k.credits_used,
                                        k.overage, NULL::BIGINT, NULL::BIGINT
                                 FROM usage_keys AS k WHERE k.key = p_key;
                END IF;
                RETURN;
            END IF;
        END IF;
        IF (SELECT s.version FROM subscriptions AS s WHERE s.subject = p_subject FOR SHARE)
           IS DISTINCT FROM p_version THEN
            v_outcome := 'conflict';
            RAISE SQLSTATE 'PGC01';
        END IF;
        INSERT INTO quota_usage AS q (subject, meter, window_start, used) VALUES (p_subject, p_meter, p_window, 0)
        ON CONFLICT (subject, meter, window_start) DO NOTHING;
        SELECT q.used, q.billed INTO v_used, v_billed FROM quota_usage AS q
        WHERE q.subject = p_subject AND q.meter = p_meter AND q.window_start = p_window FOR UPDATE;
        v_allow := LEAST(p_amount, GREATEST(p_limit - v_used, 0));
        v_rest := p_amount - v_allow;
        IF v_rest > 0 AND p_credits THEN
            FOR g IN SELECT c.grant_id, c.remaining FROM credit_grants AS c
                     WHERE c.subject = p_subject AND c.meter = p_meter AND c.remaining > 0
                       AND (c.expires_at IS NULL OR c.expires_at > p_now)
                       AND (p_not_before IS NULL OR c.created_at >= p_not_before)
                       AND (c.source NOT IN ('period', 'rollover') OR
                            plangate_tier_open(p_subject, p_meter, p_now, p_tier_grants, c.created_at))
                     ORDER BY c.priority, c.expires_at NULLS LAST, c.created_at, c.grant_id FOR UPDATE LOOP
                EXIT WHEN v_spent = v_rest;
                v_take := LEAST(g.remaining, v_rest - v_spent);
                UPDATE credit_grants AS c SET remaining = c.remaining - v_take
                WHERE c.subject = p_subject AND c.grant_id = g.grant_id;
                v_spent := v_spent + v_take;
            END LOOP;
        END IF;
        v_over := v_rest - v_spent;
        v_bill := CASE WHEN p_cap IS NULL THEN v_over ELSE LEAST(v_over, GREATEST(p_cap - v_billed, 0)) END;
        -- Work that adds nothing to the window's usage (within the limit, or paid by credits whole) is never past
        -- the ceiling, however far past it usage counted by /v1/usage took the window.
        IF p_ceiling IS NOT NULL AND ((v_over > 0 AND v_used > p_ceiling - v_allow - v_over) OR v_bill < v_over) THEN
            v_outcome := 'refused';
            RAISE SQLSTATE 'PGC01';
        END IF;
        IF v_used > 4611686018427387904 - v_allow - v_over THEN
            v_outcome := 'ceiling';
            RAISE SQLSTATE 'PGC01';
        END IF;
        UPDATE quota_usage AS q SET used = v_used + v_allow + v_over, billed = v_billed + v_bill
        WHERE q.subject = p_subject AND q.meter = p_meter AND q.window_start = p_window;
        IF v_bill > 0 AND p_report IS NOT NULL THEN
            INSERT INTO overage_reports (identifier, subject, meter, event_name, value, at, stripe_customer,
                                         next_attempt_at)
            VALUES (p_report_id, p_subject, p_meter, p_report, v_bill, p_now, p_customer, p_now)
            ON CONFLICT (identifier) DO NOTHING;
        END IF;
        IF p_key IS NOT NULL THEN
            UPDATE usage_keys AS k SET used_after = v_used + v_allow + v_over, credits_used = v_spent, overage = v_bill
            WHERE k.subject = p_subject AND k.key = p_key;
        END IF;
        v_balance := plangate_balance(p_subject, p_meter, p_now, p_not_before, p_tier_grants);
        IF p_announce THEN
            PERFORM pg_notify('plangate_usage', (v_used + v_allow + v_over) || E'\t' || p_window || E'\t' || p_meter
                                                || E'\t' || p_subject);
        END IF;
        RETURN QUERY SELECT 'counted'::TEXT, v_used + v_allow + v_over, NULL::TEXT, NULL::TEXT, NULL::BIGINT,
                            v_spent, v_bill, v_balance, v_billed + v_bill;
        RETURN;
    EXCEPTION WHEN SQLSTATE 'PGC01' THEN
        NULL;
    END;
    IF v_outcome IN ('refused', 'ceiling') THEN
        SELECT q.used, q.billed INTO v_used, v_billed FROM quota_usage AS q
        WHERE q.subject = p_subject AND q.meter = p_meter AND q.window_start = p_window;
        v_balance := plangate_balance(p_subject, p_meter, p_now, p_not_before, p_tier_grants);
    END IF;
    RETURN QUERY SELECT v_outcome, coalesce(v_used, 0), NULL::TEXT, NULL::TEXT, NULL::BIGINT, 0::BIGINT, 0::BIGINT,
                        v_balance, CASE WHEN v_outcome IN ('refused', 'ceiling') THEN coalesce(v_billed, 0) END;
END
$$;
