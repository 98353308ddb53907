-- The overage each window has billed (reported to Stripe, or to be), beside its usage: a window bills at most its
-- quota's `overage: {up_to}`, and its usage past the limit does not say how much it billed once the limit changed
-- within it (seats, a trait, a plan's deploy) or once work that already ran was counted past the cap. plangate_spend
-- reads and writes it under the window's row lock.
ALTER TABLE quota_usage ADD COLUMN billed BIGINT NOT NULL DEFAULT 0;

-- Windows counted before: the overage reports of the subject's meter made in the window, up to the start of the
-- subject's next window of the meter (a report is made with its count, so its time is in its window).
UPDATE quota_usage AS q SET billed = (
    SELECT coalesce(sum(r.value), 0) FROM overage_reports AS r
    WHERE r.subject = q.subject AND r.meter = q.meter AND r.at >= q.window_start
      AND NOT EXISTS (SELECT 1 FROM quota_usage AS n WHERE n.subject = q.subject AND n.meter = q.meter
                      AND n.window_start > q.window_start AND n.window_start <= r.at))
WHERE EXISTS (SELECT 1 FROM overage_reports AS r WHERE r.subject = q.subject AND r.meter = q.meter
              AND r.at >= q.window_start);

-- plangate_spend takes the window's cap (p_cap) and answers what the window has billed: its result's shape changes,
-- so the old one goes (CREATE OR REPLACE cannot change a result type, and beside a new signature it would stay
-- callable, billing past the cap). The new one replaces itself should this run again (a test undoing migrations).
-- A node still running the old code fails its spends from here on (its fail mode answers a consume past a limit,
-- its usage past a limit is a 503 the caller retries with its key) until it runs the new code.
DROP FUNCTION IF EXISTS plangate_spend(TEXT, TEXT, BIGINT, BIGINT, BIGINT, BIGINT, BOOLEAN, DOUBLE PRECISION, BOOLEAN,
                                       TEXT, DOUBLE PRECISION, BIGINT, TEXT, TEXT, TEXT, BOOLEAN);

-- As before (migration entitlements), and: the work's overage is billed up to what p_cap (NULL: unbounded) leaves
-- of what the window has billed (its row's `billed`, read under the row's lock with its usage). Work that already
-- ran (no ceiling) is counted whole and bills that much, a consume (p_ceiling) that would bill less than its
-- overage is refused. `over` answers what the work bills (its report's value, its key's overage), `billed` what
-- the window has billed with it (or, refused, so far). A key is looked up by its subject first (the Citus layout:
-- keys unique per subject), by itself only for a key first used for another subject.
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
                       AND (p_tier_grants OR c.source NOT IN ('period', 'rollover'))
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
        IF p_ceiling IS NOT NULL AND (v_used + v_allow + v_over > p_ceiling OR v_bill < v_over) THEN
            v_outcome := 'refused';
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
    IF v_outcome = 'refused' THEN
        SELECT q.used, q.billed INTO v_used, v_billed FROM quota_usage AS q
        WHERE q.subject = p_subject AND q.meter = p_meter AND q.window_start = p_window;
        v_balance := plangate_balance(p_subject, p_meter, p_now, p_not_before, p_tier_grants);
    END IF;
    RETURN QUERY SELECT v_outcome, coalesce(v_used, 0), NULL::TEXT, NULL::TEXT, NULL::BIGINT, 0::BIGINT, 0::BIGINT,
                        v_balance, CASE WHEN v_outcome = 'refused' THEN coalesce(v_billed, 0) END;
END
$$;
