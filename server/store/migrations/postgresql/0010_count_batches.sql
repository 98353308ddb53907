-- Counts in batches: every count a node has waiting goes to the server in one call and commits in one
-- transaction (one round trip, one WAL flush), each still with its own outcome. plangate_count (migration 5)
-- answered one count and left a refused one by an exception block, a subtransaction: in a batch that would be
-- one per count, and past 64 in a transaction every other session's snapshots slow down (subxid overflow).
-- Here nothing a count writes is ever undone by a rollback: the key goes in first (it decides a repeat, and
-- waits for a concurrent writer of the same key), and a count that is then refused or conflicts deletes it.
-- A failing statement (e.g. a bigint overflow) fails the whole call: the store then sends the batch's counts
-- one at a time, so that only the failing one fails.
--
-- The arrays are one count each, in the order to run them: the store sorts them by (subject, meter, window)
-- so that every batch takes its row locks in the same order, and two nodes' batches cannot deadlock.
-- Every statement names the count's subject (so that the schema can run on Citus, distributed by subject; see
-- README), but for the search of a key first used for another subject, which only a key unique across subjects
-- can meet.
-- Outcomes as plangate_count's: counted, refused (used: the usage now), conflict (the row's version is not
-- p_versions[i]), repeat (the key was seen: its first subject, meter, amount and usage after it).
-- Every count that went through is also announced on the channel plangate_usage, one line per count
-- ("used window meter subject", tab-separated, subject last), in notifications under 8000 bytes: other nodes
-- keep their cached usage current from them (a check answers without a round trip), and PostgreSQL delivers
-- them only once the batch has committed.

CREATE OR REPLACE FUNCTION plangate_count_batch(p_subjects TEXT[], p_meters TEXT[], p_windows BIGINT[], p_amounts BIGINT[],
                                     p_limits BIGINT[], p_keys TEXT[], p_versions BIGINT[], p_nows DOUBLE PRECISION[],
                                     p_announce BOOLEAN)
RETURNS TABLE (outcome TEXT, used BIGINT, seen_subject TEXT, seen_meter TEXT, seen_amount BIGINT)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    i INT;
    v_version BIGINT;
    v_used BIGINT;
    v_line TEXT;
    v_note TEXT := '';
BEGIN
    FOR i IN 1 .. coalesce(array_length(p_subjects, 1), 0) LOOP
        outcome := NULL; used := 0; seen_subject := NULL; seen_meter := NULL; seen_amount := NULL;
        IF p_keys[i] IS NOT NULL THEN
            INSERT INTO usage_keys AS k (key, subject, meter, amount, window_start, used_after, created_at)
            VALUES (p_keys[i], p_subjects[i], p_meters[i], p_amounts[i], p_windows[i], 0, p_nows[i])
            ON CONFLICT (key) DO NOTHING;
            IF NOT FOUND THEN
                SELECT 'repeat', k.used_after, k.subject, k.meter, k.amount
                INTO outcome, used, seen_subject, seen_meter, seen_amount
                FROM usage_keys AS k WHERE k.subject = p_subjects[i] AND k.key = p_keys[i];
                IF NOT FOUND THEN
                    SELECT 'repeat', k.used_after, k.subject, k.meter, k.amount
                    INTO outcome, used, seen_subject, seen_meter, seen_amount
                    FROM usage_keys AS k WHERE k.key = p_keys[i];
                END IF;
                RETURN NEXT;
                CONTINUE;
            END IF;
        END IF;
        v_used := NULL;
        SELECT s.version INTO v_version FROM subscriptions AS s WHERE s.subject = p_subjects[i] FOR SHARE;
        IF v_version IS DISTINCT FROM p_versions[i] THEN
            outcome := 'conflict';
        ELSIF p_limits[i] IS NULL OR p_amounts[i] <= p_limits[i] THEN
            INSERT INTO quota_usage AS q (subject, meter, window_start, used)
            VALUES (p_subjects[i], p_meters[i], p_windows[i], p_amounts[i])
            ON CONFLICT (subject, meter, window_start) DO UPDATE SET used = q.used + EXCLUDED.used
            WHERE p_limits[i] IS NULL OR q.used + EXCLUDED.used <= p_limits[i]
            RETURNING q.used INTO v_used;
        END IF;
        IF v_used IS NOT NULL THEN
            outcome := 'counted';
            used := v_used;
            IF p_keys[i] IS NOT NULL THEN
                UPDATE usage_keys SET used_after = v_used WHERE subject = p_subjects[i] AND key = p_keys[i];
            END IF;
            IF p_announce THEN
                v_line := v_used || E'\t' || p_windows[i] || E'\t' || p_meters[i] || E'\t' || p_subjects[i];
                IF octet_length(v_note) + octet_length(v_line) > 7900 THEN
                    PERFORM pg_notify('plangate_usage', v_note);
                    v_note := '';
                END IF;
                v_note := v_note || CASE WHEN v_note = '' THEN '' ELSE E'\n' END || v_line;
            END IF;
        ELSE
            IF p_keys[i] IS NOT NULL THEN
                DELETE FROM usage_keys WHERE subject = p_subjects[i] AND key = p_keys[i];
            END IF;
            IF outcome IS NULL THEN
                outcome := 'refused';
                used := coalesce((SELECT q.used FROM quota_usage AS q WHERE q.subject = p_subjects[i]
                                  AND q.meter = p_meters[i] AND q.window_start = p_windows[i]), 0);
            END IF;
        END IF;
        RETURN NEXT;
    END LOOP;
    IF v_note <> '' THEN
        PERFORM pg_notify('plangate_usage', v_note);
    END IF;
END
$$;

DROP FUNCTION IF EXISTS plangate_count(TEXT, TEXT, BIGINT, BIGINT, BIGINT, TEXT, DOUBLE PRECISION, BIGINT);
