-- Crash & Smash: every entry that came while the one before it was past its deadline waits its
-- turn, not only one per partition.
--
-- Why: one entry could wait behind an overdue one (``next_*``, migration 0540). A third entry of
-- the partition, while the first was still not fired, took the waiting one's place even when that
-- one was itself past its deadline when the third was received: its Crash & Smash was never
-- raised (the timer had not run: settling after a start or a database outage, or failing).
--
-- Now the rule between an entry and the next applies down the line: a new entry replaces the last
-- one waiting when that one was not due yet when it was received (as a pending entry is replaced
-- in time), and otherwise waits behind it. The first waiting stays in ``next_*`` (what a timer of
-- any engine version moves into the row when the entry fires); those behind it are kept in order
-- in ``later_entries``, and a trigger moves the first of them into ``next_*`` whenever ``next_*``
-- is emptied on a pending row (the timer firing, a close), and empties them when the row is no
-- longer pending. A close ends the entry and, one after the other, each waiting entry it may close
-- (one sent before it, or when the close or the entry carries no module time); the first sent
-- after it takes the row's place. With one waiting entry this is what 0540 did.
-- ingest_entries is 0550's with the open and the close changed (migrations are append-only).
CREATE TYPE waiting_entry AS (
    zone        integer,
    deadline    timestamptz,
    sent_at     timestamptz,
    received_at timestamptz
);
ALTER TABLE pending_entries ADD COLUMN later_entries waiting_entry[] NOT NULL DEFAULT '{}';
COMMENT ON COLUMN pending_entries.later_entries IS
    'entries waiting behind next_*, in order: each came when the one before it was past its deadline';

CREATE FUNCTION pending_entries_next_in_line() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.state <> 'pending' THEN
        NEW.later_entries := '{}';
    ELSIF NEW.next_deadline IS NULL THEN
        NEW.next_zone := (NEW.later_entries[1]).zone;
        NEW.next_deadline := (NEW.later_entries[1]).deadline;
        NEW.next_sent_at := (NEW.later_entries[1]).sent_at;
        NEW.next_received_at := (NEW.later_entries[1]).received_at;
        NEW.later_entries := NEW.later_entries[2:];
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER pending_entries_next_in_line BEFORE UPDATE ON pending_entries
    FOR EACH ROW WHEN (cardinality(NEW.later_entries) > 0)
    EXECUTE FUNCTION pending_entries_next_in_line();

CREATE OR REPLACE FUNCTION ingest_entries(p_opens json, p_closes json, p_pos integer[])
RETURNS TABLE (kind text, ord integer, id bigint, dkey text, at timestamptz, account text,
               part integer, reason text, leased boolean)
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off
AS $$
#variable_conflict use_column
DECLARE
    v_close_accounts text[];
    v_closed_accounts text[] := '{}';
    v_closed_partitions integer[] := '{}';
    v_closed_reasons text[] := '{}';
    v_again boolean;
BEGIN
    -- Closes first: a disarm or alarm that came before a new entry in the batch must not close
    -- that entry (the planner already dropped entries closed later in the batch).
    IF p_closes IS NOT NULL THEN
        v_close_accounts := ARRAY(SELECT DISTINCT t.a FROM json_to_recordset(p_closes) AS t(a text));
        -- A close ends the entry; the one waiting behind it, if any, takes its place and the close
        -- is tried on it in the next round (it ends it too unless the module sent it after the
        -- close), so a close ends the entries of the line it came after, one round each.
        LOOP
            WITH given AS MATERIALIZED (
                -- a close's place in the batch: its signal's (o), its event's in the signal (n),
                -- then the partition's close after the account's (w), a total order
                SELECT t.o, coalesce(t.i, 0) AS n, t.p IS NOT NULL AS w, t.a, t.p, t.r, t.s
                FROM json_to_recordset(p_closes)
                     AS t(o int, a text, p int, r text, s timestamptz, i int)
                WHERE t.o = ANY (p_pos)
            ), closed AS (
                UPDATE pending_entries e SET
                    state = CASE WHEN e.next_deadline IS NULL THEN 'closed' ELSE 'pending' END,
                    closed_reason = CASE WHEN e.next_deadline IS NULL THEN t.r END,
                    closed_at = CASE WHEN e.next_deadline IS NULL THEN now() END,
                    zone = CASE WHEN e.next_deadline IS NULL THEN e.zone ELSE e.next_zone END,
                    deadline = coalesce(e.next_deadline, e.deadline),
                    opened_sent_at = CASE WHEN e.next_deadline IS NULL THEN e.opened_sent_at
                                          ELSE e.next_sent_at END,
                    received_at = CASE WHEN e.next_deadline IS NULL THEN e.received_at
                                       ELSE e.next_received_at END,
                    -- emptied: the trigger moves the first of later_entries here
                    next_zone = NULL, next_deadline = NULL, next_sent_at = NULL,
                    next_received_at = NULL
                FROM given t
                WHERE e.account = t.a AND (t.p IS NULL OR e.partition = t.p)
                  AND e.state = 'pending' AND e.account = ANY (v_close_accounts)  -- index path
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
                -- e: the row as written, with the entry that took its place (if any)
                RETURNING e.account, e.partition, t.r,
                          e.state = 'pending' AND (t.s IS NULL OR e.opened_sent_at IS NULL
                                                   OR t.s >= e.opened_sent_at) AS again
            )
            SELECT v_closed_accounts || coalesce(array_agg(c.account), '{}'),
                   v_closed_partitions || coalesce(array_agg(c.partition), '{}'),
                   v_closed_reasons || coalesce(array_agg(c.r), '{}'),
                   coalesce(bool_or(c.again), false)
            INTO v_closed_accounts, v_closed_partitions, v_closed_reasons, v_again
            FROM closed c;
            EXIT WHEN NOT v_again;
        END LOOP;
        -- one row per entry line closed (its close is the same in every round)
        RETURN QUERY
        SELECT DISTINCT 'closed'::text, NULL::int, NULL::bigint, NULL::text, NULL::timestamptz,
               c.a, c.p, c.r, NULL::boolean
        FROM unnest(v_closed_accounts, v_closed_partitions, v_closed_reasons) AS c(a, p, r);
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
            -- The new entry (x) and the line's last entry (the pending one, the one waiting in
            -- next_*, or the last of later_entries): x replaces it when it was not due yet when x
            -- was received, and otherwise waits behind it (held). Decided on the row as it is once
            -- locked, so a timer firing it meanwhile is seen.
            ON CONFLICT (account, partition) DO UPDATE SET
                (zone, deadline, opened_sent_at, received_at, opened_at, next_zone, next_deadline,
                 next_sent_at, next_received_at, later_entries, state, closed_reason) = (
                SELECT
                    CASE WHEN v.x_is = 'entry' THEN EXCLUDED.zone ELSE e.zone END,
                    CASE WHEN v.x_is = 'entry' THEN EXCLUDED.deadline ELSE e.deadline END,
                    CASE WHEN v.x_is = 'entry' THEN EXCLUDED.opened_sent_at
                         ELSE e.opened_sent_at END,
                    CASE WHEN v.x_is = 'entry' THEN EXCLUDED.received_at ELSE e.received_at END,
                    CASE WHEN v.x_is = 'entry' THEN now() ELSE e.opened_at END,
                    CASE v.x_is WHEN 'entry' THEN NULL WHEN 'next' THEN EXCLUDED.zone
                         ELSE e.next_zone END,
                    CASE v.x_is WHEN 'entry' THEN NULL WHEN 'next' THEN EXCLUDED.deadline
                         ELSE e.next_deadline END,
                    CASE v.x_is WHEN 'entry' THEN NULL WHEN 'next' THEN EXCLUDED.opened_sent_at
                         ELSE e.next_sent_at END,
                    CASE v.x_is WHEN 'entry' THEN NULL WHEN 'next' THEN EXCLUDED.received_at
                         ELSE e.next_received_at END,
                    CASE v.x_is
                        WHEN 'later' THEN e.later_entries || v.x
                        WHEN 'last' THEN e.later_entries[1:cardinality(e.later_entries) - 1] || v.x
                        ELSE '{}'::waiting_entry[] END,
                    'pending', NULL::text
                FROM (
                    SELECT ROW(EXCLUDED.zone, EXCLUDED.deadline, EXCLUDED.opened_sent_at,
                               EXCLUDED.received_at)::waiting_entry AS x,
                           CASE
                               WHEN e.state <> 'pending' OR EXCLUDED.received_at IS NULL
                                   THEN 'entry'
                               WHEN cardinality(e.later_entries) > 0 THEN
                                   CASE WHEN (e.later_entries[cardinality(e.later_entries)]).deadline
                                             <= EXCLUDED.received_at
                                        THEN 'later' ELSE 'last' END
                               WHEN e.next_deadline IS NOT NULL THEN
                                   CASE WHEN e.next_deadline <= EXCLUDED.received_at
                                        THEN 'later' ELSE 'next' END
                               WHEN e.deadline <= EXCLUDED.received_at THEN 'next'
                               ELSE 'entry'
                           END AS x_is
                ) v)
            -- an entry the module sent before the pending one (or before one waiting behind it)
            -- moves nothing
            WHERE e.state <> 'pending'
               OR ((e.opened_sent_at IS NULL OR EXCLUDED.opened_sent_at IS NULL
                    OR EXCLUDED.opened_sent_at >= e.opened_sent_at)
                   AND (e.next_sent_at IS NULL OR EXCLUDED.opened_sent_at IS NULL
                        OR EXCLUDED.opened_sent_at >= e.next_sent_at)
                   AND (cardinality(e.later_entries) = 0 OR EXCLUDED.opened_sent_at IS NULL
                        OR (e.later_entries[cardinality(e.later_entries)]).sent_at IS NULL
                        OR EXCLUDED.opened_sent_at
                           >= (e.later_entries[cardinality(e.later_entries)]).sent_at))
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
