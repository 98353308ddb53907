-- Entitlements beyond one quota (issue 19): seats, add-ons and traits on the subject's row, credit grants, and
-- overage reported to Stripe.

-- The followed subscription's quantity of its tier's item (seats), the add-ons its live subscriptions buy
-- (JSON: [[name, quantity], ...]) and the numbers set on the subject through the API (JSON: [[name, value], ...]).
ALTER TABLE subscriptions ADD COLUMN quantity BIGINT;
ALTER TABLE subscriptions ADD COLUMN addons TEXT;
ALTER TABLE subscriptions ADD COLUMN traits TEXT;

-- Credits: each grant of a subject in a meter's unit, what is left of it, and where it came from. The id is the
-- Checkout session's and line's for a purchase, the window's for a tier's grant, the caller's key (or a new id)
-- for an admin's: the same grant is never made twice.
CREATE TABLE credit_grants (
    subject     TEXT NOT NULL,
    grant_id    TEXT NOT NULL,
    meter       TEXT NOT NULL,
    amount      BIGINT NOT NULL,
    remaining   BIGINT NOT NULL,
    priority    INTEGER NOT NULL,
    created_at  DOUBLE PRECISION NOT NULL,
    expires_at  DOUBLE PRECISION,
    source      TEXT NOT NULL,          -- purchase, admin, period, rollover
    note        TEXT NOT NULL DEFAULT '',
    actor       TEXT,                   -- who granted it (admin), or the event that did (purchase)
    PRIMARY KEY (subject, grant_id)
);
CREATE INDEX credit_grants_spendable ON credit_grants (subject, meter, priority) WHERE remaining > 0;

-- What a counted piece of work spent of the credits, and how much of it was overage: a repeat of its key answers
-- the same.
ALTER TABLE usage_keys ADD COLUMN credits_used BIGINT NOT NULL DEFAULT 0;
ALTER TABLE usage_keys ADD COLUMN overage BIGINT NOT NULL DEFAULT 0;

-- Overage to report to Stripe as billing meter events, one row per counted piece of work (its identifier is the
-- meter event's, so Stripe counts a retried report once). A report Stripe refuses stays, `refused`, with why.
CREATE TABLE overage_reports (
    identifier      TEXT PRIMARY KEY,
    subject         TEXT NOT NULL,
    meter           TEXT NOT NULL,
    event_name      TEXT NOT NULL,
    value           BIGINT NOT NULL,
    at              DOUBLE PRECISION NOT NULL,      -- when the work was counted: the meter event's timestamp
    stripe_customer TEXT,
    status          TEXT NOT NULL DEFAULT 'pending',   -- pending, sent, refused
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at DOUBLE PRECISION NOT NULL,
    last_error      TEXT,
    sent_at         DOUBLE PRECISION
);
CREATE INDEX overage_reports_due ON overage_reports (next_attempt_at) WHERE status = 'pending';
CREATE INDEX overage_reports_by_subject ON overage_reports (subject, at);

-- A count that may go past the window's limit, in one round trip (a count of its own, not in a batch as
-- plangate_count_batch's: it holds the window's row while it takes the grants in order): the work
-- takes what is left of the limit first, then the subject's credits (grants in spending order: priority, the one
-- expiring first, the oldest), then overage, and the window may hold at most p_ceiling (NULL: no ceiling: work
-- that already ran, or unbounded overage). The window's row is locked first, then the grants in spending order:
-- every spender of a subject's meter takes its locks in that order, so concurrent ones on any node wait for each
-- other and never deadlock, and a credit is never spent twice. Overage becomes a report row in the same
-- transaction (p_report: the meter event's name; NULL: not reported). Leaving the inner block by PGC01 undoes the
-- key, the window and the grants: a refused count stores nothing. Outcomes as plangate_count's, with what the work
-- spent of the credits, its overage, and the balance left (the spendable grants: p_not_before and p_tier_grants
-- say which, as engine.Spendable does). A count that went through is announced on plangate_usage as
-- plangate_count_batch announces its counts (p_announce), so that every node's cached usage stays current.
CREATE OR REPLACE FUNCTION plangate_spend(p_subject TEXT, p_meter TEXT, p_window BIGINT, p_amount BIGINT,
                                          p_limit BIGINT, p_ceiling BIGINT, p_credits BOOLEAN,
                                          p_not_before DOUBLE PRECISION, p_tier_grants BOOLEAN, p_key TEXT,
                                          p_now DOUBLE PRECISION, p_version BIGINT, p_report TEXT,
                                          p_report_id TEXT, p_customer TEXT, p_announce BOOLEAN)
RETURNS TABLE (outcome TEXT, used BIGINT, seen_subject TEXT, seen_meter TEXT, seen_amount BIGINT,
               spent BIGINT, over BIGINT, balance BIGINT)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_outcome TEXT;
    v_used BIGINT;
    v_allow BIGINT;
    v_rest BIGINT;
    v_spent BIGINT := 0;
    v_over BIGINT;
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
                                    k.overage, NULL::BIGINT
                             FROM usage_keys AS k WHERE k.key = p_key;
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
        SELECT q.used INTO v_used FROM quota_usage AS q
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
        IF p_ceiling IS NOT NULL AND v_used + v_allow + v_over > p_ceiling THEN
            v_outcome := 'refused';
            RAISE SQLSTATE 'PGC01';
        END IF;
        UPDATE quota_usage AS q SET used = v_used + v_allow + v_over
        WHERE q.subject = p_subject AND q.meter = p_meter AND q.window_start = p_window;
        IF v_over > 0 AND p_report IS NOT NULL THEN
            INSERT INTO overage_reports (identifier, subject, meter, event_name, value, at, stripe_customer,
                                         next_attempt_at)
            VALUES (p_report_id, p_subject, p_meter, p_report, v_over, p_now, p_customer, p_now)
            ON CONFLICT (identifier) DO NOTHING;
        END IF;
        IF p_key IS NOT NULL THEN
            UPDATE usage_keys AS k SET used_after = v_used + v_allow + v_over, credits_used = v_spent, overage = v_over
            WHERE k.key = p_key;
        END IF;
        v_balance := plangate_balance(p_subject, p_meter, p_now, p_not_before, p_tier_grants);
        IF p_announce THEN
            PERFORM pg_notify('plangate_usage', (v_used + v_allow + v_over) || E'\t' || p_window || E'\t' || p_meter
                                                || E'\t' || p_subject);
        END IF;
        RETURN QUERY SELECT 'counted'::TEXT, v_used + v_allow + v_over, NULL::TEXT, NULL::TEXT, NULL::BIGINT,
                            v_spent, v_over, v_balance;
        RETURN;
    EXCEPTION WHEN SQLSTATE 'PGC01' THEN
        NULL;
    END;
    IF v_outcome = 'refused' THEN
        v_used := (SELECT q.used FROM quota_usage AS q
                   WHERE q.subject = p_subject AND q.meter = p_meter AND q.window_start = p_window);
        v_balance := plangate_balance(p_subject, p_meter, p_now, p_not_before, p_tier_grants);
    END IF;
    RETURN QUERY SELECT v_outcome, coalesce(v_used, 0), NULL::TEXT, NULL::TEXT, NULL::BIGINT, 0::BIGINT, 0::BIGINT,
                        v_balance;
END
$$;

-- The subject's spendable credits of a meter now (see plangate_spend).
CREATE OR REPLACE FUNCTION plangate_balance(p_subject TEXT, p_meter TEXT, p_now DOUBLE PRECISION,
                                            p_not_before DOUBLE PRECISION, p_tier_grants BOOLEAN)
RETURNS BIGINT LANGUAGE sql STABLE AS $$
    SELECT coalesce(sum(c.remaining), 0)::BIGINT FROM credit_grants AS c
    WHERE c.subject = p_subject AND c.meter = p_meter AND c.remaining > 0
      AND (c.expires_at IS NULL OR c.expires_at > p_now)
      AND (p_not_before IS NULL OR c.created_at >= p_not_before)
      AND (p_tier_grants OR c.source NOT IN ('period', 'rollover'))
$$;
