-- Crash & Smash: every disarm's module time is remembered, not only the latest one.
--
-- Why: 0520 kept one row per account and partition with the latest disarm. An entry whose
-- delivery waited (an MQTT message held for the engine that took it, up to the session expiry)
-- is ended by the disarm the panel sent right after it; when the owner armed and disarmed again
-- before the entry arrived, that later disarm replaced the first, the entry found no disarm
-- within its timer and opened one: Crash & Smash on a disarmed system.
--
-- Now each disarm (account, partition, module time) is a row of its own; an entry is stale when
-- any of them lies within its timer, as before. A disarm removes the rows of its account and
-- partition a day older than itself, so each keeps about a day of disarms (an entry arriving
-- more than a day after the panel's next disarms may find none and open: a late Crash & Smash
-- rather than a missed one).
-- ingest_entries is 0520's with the disarm write changed (migrations are append-only).
ALTER TABLE entry_disarms DROP CONSTRAINT entry_disarms_pkey;
ALTER TABLE entry_disarms ADD PRIMARY KEY (account, partition, sent_at);
COMMENT ON COLUMN entry_disarms.sent_at IS 'a disarm''s module time (one row per disarm)';

CREATE OR REPLACE FUNCTION ingest_entries(p_opens json, p_closes json, p_pos integer[])
RETURNS TABLE (kind text, ord integer, id bigint, dkey text, at timestamptz, account text,
               part integer, reason text, leased boolean)
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off
AS $$
#variable_conflict use_column
DECLARE
    v_close_accounts text[];
BEGIN
    -- Closes first: a disarm or alarm that came before a new entry in the batch must not close
    -- that entry (the planner already dropped entries closed later in the batch).
    IF p_closes IS NOT NULL THEN
        v_close_accounts := ARRAY(SELECT DISTINCT t.a FROM json_to_recordset(p_closes) AS t(a text));
        RETURN QUERY
        WITH closed AS (
            UPDATE pending_entries e SET state = 'closed', closed_reason = t.r, closed_at = now()
            FROM json_to_recordset(p_closes) AS t(o int, a text, p int, r text, s timestamptz)
            WHERE t.o = ANY (p_pos) AND e.account = t.a AND (t.p IS NULL OR e.partition = t.p)
              AND e.state = 'pending' AND e.account = ANY (v_close_accounts)  -- index path always
              -- a close the module sent before the entry is older news: the entry stays
              AND (t.s IS NULL OR e.opened_sent_at IS NULL OR t.s >= e.opened_sent_at)
            RETURNING e.account, e.partition, t.r
        )
        SELECT 'closed'::text, NULL::int, NULL::bigint, NULL::text, NULL::timestamptz,
               closed.account, closed.partition, closed.r, NULL::boolean
        FROM closed;
        -- every disarm's module time (a later one must not hide the one that ended an entry
        -- still to come), and those of its account and partition a day older than it go
        WITH disarms AS MATERIALIZED (
            SELECT DISTINCT t.a, coalesce(t.p, -1) AS p, t.s
            FROM json_to_recordset(p_closes) AS t(o int, a text, p int, r text, s timestamptz)
            WHERE t.o = ANY (p_pos) AND t.r = 'disarm' AND t.s IS NOT NULL
        ), kept AS (
            INSERT INTO entry_disarms (account, partition, sent_at)
            SELECT d.a, d.p, d.s FROM disarms d ORDER BY 1, 2, 3
            ON CONFLICT (account, partition, sent_at) DO NOTHING
        )
        DELETE FROM entry_disarms x
        USING (SELECT d.a, d.p, max(d.s) AS s FROM disarms d GROUP BY 1, 2) n
        WHERE x.account = n.a AND x.partition = n.p AND x.sent_at < n.s - interval '1 day';
    END IF;
    IF p_opens IS NOT NULL THEN
        RETURN QUERY
        WITH wanted AS MATERIALIZED (
            SELECT t.*,
                   EXISTS (SELECT 1 FROM entry_disarms x
                           WHERE x.account = t.a AND x.partition IN (t.p, -1)
                             AND x.sent_at >= t.s AND x.sent_at < t.u) AS stale
            FROM json_to_recordset(p_opens)
                 AS t(o int, a text, p int, z int, d timestamptz, s timestamptz, u timestamptz)
            WHERE t.o = ANY (p_pos)
        ), opened AS (
            INSERT INTO pending_entries AS e (account, partition, zone, deadline, state, opened_at,
                                              opened_sent_at)
            SELECT w.a, w.p, w.z, w.d, 'pending', now(), w.s
            FROM wanted w WHERE NOT w.stale
            ORDER BY w.a, w.p
            ON CONFLICT (account, partition) DO UPDATE SET zone = EXCLUDED.zone,
                deadline = EXCLUDED.deadline, state = 'pending', opened_at = now(),
                closed_reason = NULL, opened_sent_at = EXCLUDED.opened_sent_at
            -- an entry the module sent before the pending one does not move its deadline
            WHERE e.state <> 'pending' OR e.opened_sent_at IS NULL
               OR EXCLUDED.opened_sent_at IS NULL OR EXCLUDED.opened_sent_at >= e.opened_sent_at
            RETURNING e.account, e.partition
        )
        SELECT 'opened'::text, NULL::int, NULL::bigint, NULL::text, NULL::timestamptz,
               opened.account, opened.partition, NULL::text, NULL::boolean
        FROM opened
        UNION ALL
        SELECT 'stale'::text, NULL::int, NULL::bigint, NULL::text, NULL::timestamptz,
               w.a, w.p, NULL::text, NULL::boolean
        FROM wanted w WHERE w.stale;
    END IF;
END $$;

