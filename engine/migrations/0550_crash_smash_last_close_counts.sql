-- Crash & Smash: of a close of every partition and a close of the entry's partition in one batch,
-- the one the module sent last counts.
--
-- Why: a batch holding a close without a partition (SIA OP without an area, an alarm of the whole
-- account) and one of partition N matched N's pending entry twice, and an UPDATE ... FROM applies
-- one of two source rows at random (in practice the first written: the account-wide one). A disarm
-- sent after the entry waiting behind an overdue one (migration 0540) then ended only the first
-- when an older account-wide disarm came in its batch: the second raised Crash & Smash on a
-- disarmed system. The reason recorded (disarm or alarm) was the other close's too.
--
-- Now the two are ordered as the engine orders two closes of one partition (CrashSmashStage.plan):
-- the later module time, or on a tie the later event (by its signal's place in the batch, then by
-- the event's place in its signal, ``i`` in p_closes, sent by the engine from this migration on);
-- a close without a module time counts over any with one (the first of those). Only that one is
-- applied to the entry; what it does is unchanged. (An engine older than this migration sends no
-- ``i``: the two closes of one of its signals are then taken as the account's, then the partition's.)
-- ingest_entries is 0540's with the close changed (migrations are append-only).

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
        WITH given AS MATERIALIZED (
            -- a close's place in the batch: its signal's (o), its event's in the signal (n),
            -- then the partition's close after the account's (w), a total order
            SELECT t.o, coalesce(t.i, 0) AS n, t.p IS NOT NULL AS w, t.a, t.p, t.r, t.s
            FROM json_to_recordset(p_closes)
                 AS t(o int, a text, p int, r text, s timestamptz, i int)
            WHERE t.o = ANY (p_pos)
        ), closed AS (
            UPDATE pending_entries e SET
                -- a close the module sent before the waiting entry ends only the first one: the
                -- waiting one takes its place (next_sent_at is NULL when nothing waits, or when
                -- the waiting entry had no module time: then the close ends both)
                state = CASE WHEN t.s < e.next_sent_at THEN 'pending' ELSE 'closed' END,
                closed_reason = CASE WHEN t.s < e.next_sent_at THEN NULL ELSE t.r END,
                closed_at = CASE WHEN t.s < e.next_sent_at THEN NULL ELSE now() END,
                zone = CASE WHEN t.s < e.next_sent_at THEN e.next_zone ELSE e.zone END,
                deadline = CASE WHEN t.s < e.next_sent_at THEN e.next_deadline ELSE e.deadline END,
                opened_sent_at = CASE WHEN t.s < e.next_sent_at THEN e.next_sent_at
                                      ELSE e.opened_sent_at END,
                received_at = CASE WHEN t.s < e.next_sent_at THEN e.next_received_at
                                   ELSE e.received_at END,
                next_zone = NULL, next_deadline = NULL, next_sent_at = NULL,
                next_received_at = NULL
            FROM given t
            WHERE e.account = t.a AND (t.p IS NULL OR e.partition = t.p)
              AND e.state = 'pending' AND e.account = ANY (v_close_accounts)  -- index path always
              -- a close the module sent before the entry is older news: the entry stays
              AND (t.s IS NULL OR e.opened_sent_at IS NULL OR t.s >= e.opened_sent_at)
              -- of the account's close and the partition's, only the one the module sent last
              AND NOT EXISTS (
                  SELECT 1 FROM given u
                  WHERE u.a = t.a AND (u.p IS NULL OR u.p = e.partition)
                    AND CASE WHEN t.s IS NULL
                             -- of closes without a module time, the first counts
                             THEN u.s IS NULL AND (u.o, u.n, u.w) < (t.o, t.n, t.w)
                             ELSE u.s IS NULL OR u.s > t.s
                                  OR (u.s = t.s AND (u.o, u.n, u.w) > (t.o, t.n, t.w)) END
              )
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
                 AS t(o int, a text, p int, z int, d timestamptz, s timestamptz, u timestamptz,
                      r timestamptz)
            WHERE t.o = ANY (p_pos)
        ), opened AS (
            INSERT INTO pending_entries AS e (account, partition, zone, deadline, state, opened_at,
                                              opened_sent_at, received_at)
            SELECT w.a, w.p, w.z, w.d, 'pending', now(), w.s, w.r
            FROM wanted w WHERE NOT w.stale
            ORDER BY w.a, w.p
            -- held: the pending entry was already due when this one was received (decided on the
            -- row as it is once locked, so a timer firing it meanwhile is seen)
            ON CONFLICT (account, partition) DO UPDATE SET
                zone = CASE WHEN e.state = 'pending' AND e.deadline <= EXCLUDED.received_at
                            THEN e.zone ELSE EXCLUDED.zone END,
                deadline = CASE WHEN e.state = 'pending' AND e.deadline <= EXCLUDED.received_at
                                THEN e.deadline ELSE EXCLUDED.deadline END,
                opened_sent_at = CASE WHEN e.state = 'pending'
                                           AND e.deadline <= EXCLUDED.received_at
                                      THEN e.opened_sent_at ELSE EXCLUDED.opened_sent_at END,
                received_at = CASE WHEN e.state = 'pending' AND e.deadline <= EXCLUDED.received_at
                                   THEN e.received_at ELSE EXCLUDED.received_at END,
                opened_at = CASE WHEN e.state = 'pending' AND e.deadline <= EXCLUDED.received_at
                                 THEN e.opened_at ELSE now() END,
                next_zone = CASE WHEN e.state = 'pending' AND e.deadline <= EXCLUDED.received_at
                                 THEN EXCLUDED.zone END,
                next_deadline = CASE WHEN e.state = 'pending'
                                          AND e.deadline <= EXCLUDED.received_at
                                     THEN EXCLUDED.deadline END,
                next_sent_at = CASE WHEN e.state = 'pending'
                                         AND e.deadline <= EXCLUDED.received_at
                                    THEN EXCLUDED.opened_sent_at END,
                next_received_at = CASE WHEN e.state = 'pending'
                                             AND e.deadline <= EXCLUDED.received_at
                                        THEN EXCLUDED.received_at END,
                state = 'pending', closed_reason = NULL
            -- an entry the module sent before the pending one (or before the one waiting behind
            -- it) moves nothing
            WHERE e.state <> 'pending'
               OR ((e.opened_sent_at IS NULL OR EXCLUDED.opened_sent_at IS NULL
                    OR EXCLUDED.opened_sent_at >= e.opened_sent_at)
                   AND (e.next_sent_at IS NULL OR EXCLUDED.opened_sent_at IS NULL
                        OR EXCLUDED.opened_sent_at >= e.next_sent_at))
            RETURNING e.account, e.partition, e.next_deadline IS NOT NULL AS held
        )
        SELECT CASE WHEN opened.held THEN 'held' ELSE 'opened' END, NULL::int, NULL::bigint,
               NULL::text, NULL::timestamptz, opened.account, opened.partition, NULL::text,
               NULL::boolean
        FROM opened
        UNION ALL
        SELECT 'stale'::text, NULL::int, NULL::bigint, NULL::text, NULL::timestamptz,
               w.a, w.p, NULL::text, NULL::boolean
        FROM wanted w WHERE w.stale;
    END IF;
END $$;
