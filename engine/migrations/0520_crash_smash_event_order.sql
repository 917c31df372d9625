-- Crash & Smash in the order the panel saw its events, not the order they were committed.
--
-- Why: an entry delay whose commit failed (the database went away, the engine stopped before
-- its MQTT PUBACK) comes again after a disarm that was committed first. The disarm closed
-- nothing, the late entry opened a timer, and a disarmed system raised Crash & Smash. The
-- reverse, an old disarm committed again after a new entry, closed the new entry: a real break-in
-- raised nothing.
--
-- Now, where both carry the module's own time (``sent_at``):
-- * a disarm is remembered per account and partition (``entry_disarms``, -1 = every
--   partition), with the latest module time;
-- * an entry is not opened when a disarm of its partition was sent at or after the entry and
--   before the entry's timer would have run out (``u``: the entry's time plus entry delay,
--   dialer delay and grace). A panel clock reset (a disarm far later than the entry) opens it;
-- * a close does not close a pending entry that the module sent after it.
-- Without module times, the commit order decides, as before.
--
-- Step 2 of ingest_batch moves into its own function, ``ingest_entries``, so the next change to
-- entries does not repeat the whole of ingest_batch. ingest_batch is otherwise 0470's, given
-- again (migrations are append-only).
ALTER TABLE pending_entries ADD COLUMN opened_sent_at timestamptz;

CREATE TABLE entry_disarms (
    account     text NOT NULL,
    partition   integer NOT NULL,  -- -1: a disarm that named no partition (every partition)
    sent_at     timestamptz NOT NULL,  -- the latest disarm's module time
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account, partition)
);

CREATE FUNCTION ingest_entries(p_opens json, p_closes json, p_pos integer[])
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
        INSERT INTO entry_disarms AS x (account, partition, sent_at)
        SELECT t.a, coalesce(t.p, -1), max(t.s)
        FROM json_to_recordset(p_closes) AS t(o int, a text, p int, r text, s timestamptz)
        WHERE t.o = ANY (p_pos) AND t.r = 'disarm' AND t.s IS NOT NULL
        GROUP BY 1, 2
        ORDER BY 1, 2
        ON CONFLICT (account, partition) DO UPDATE
            SET sent_at = GREATEST(x.sent_at, EXCLUDED.sent_at), updated_at = now();
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

CREATE OR REPLACE FUNCTION ingest_batch(
    p_signals json,
    p_window interval,
    p_contact_accounts text[],
    p_contact_first timestamptz[],
    p_contact_last timestamptz[],
    p_sup_accounts text[],
    p_sup_deadlines timestamptz[],
    p_opens json,
    p_closes json,
    p_decisions json,
    p_outbox json,
    p_owner text,
    p_lease interval
) RETURNS TABLE (kind text, ord integer, id bigint, dkey text, at timestamptz, account text,
                 part integer, reason text, leased boolean)
LANGUAGE plpgsql VOLATILE
-- Every table this function reads is reached by key (accounts, dedupe keys, supervision rows,
-- entries, lanes). A plan cached while a table was small (or before it was analyzed) would scan
-- it whole on every call as it grows and bloats between vacuums: keep the index paths.
SET enable_seqscan = off
AS $$
#variable_conflict use_column
DECLARE
    v_pos integer[];
    v_ids bigint[];
    v_dkeys text[];
    v_dids bigint[];
    v_dats timestamptz[];
    v_dns integer[];
    v_restores text[];
BEGIN
    -- 1. One statement: dedupe claims, the signal rows, contact times (sorted accounts: one lock
    --    order), supervision deadlines, decisions.
    WITH input AS MATERIALIZED (
        SELECT nextval('signals_id_seq') AS sid, t.*
        FROM json_to_recordset(p_signals)
             AS t(o int, at timestamptz, a text, tr text, k text, p text, tok text, enc bool,
                  seq text, rcv text, ln text, raw text, ev jsonb, cat text[], x jsonb,
                  st timestamptz, df bool, dk text, rr text, n int, w int)
    ),
    claim AS (
        -- Claim each key, or take it over when the holder's window has expired. A key held by a
        -- live earlier signal is not updated and not returned: that copy is a duplicate (its
        -- row stays locked until we commit, so an engine committing the same key at once waits
        -- and then finds ours).
        INSERT INTO signal_dedupe AS d (dedupe_key, signal_id, received_at, expires_at)
        SELECT i.dk, i.sid, i.at, i.at + greatest(p_window, make_interval(secs => i.w))
        FROM input i WHERE i.dk IS NOT NULL AND i.k = 'event'
        ON CONFLICT (dedupe_key) DO UPDATE SET signal_id = EXCLUDED.signal_id,
            received_at = EXCLUDED.received_at, expires_at = EXCLUDED.expires_at
        WHERE d.expires_at <= EXCLUDED.received_at
        RETURNING d.dedupe_key
    ),
    kept AS (
        SELECT i.* FROM input i
        WHERE i.k <> 'event' OR i.dk IS NULL OR i.dk IN (SELECT c.dedupe_key FROM claim c)
    ),
    inserted AS (
        INSERT INTO signals (id, received_at, account, transport, kind, peer, token, encrypted,
                             seq, receiver, line, raw, events, categories, xdata, sent_at,
                             dialer_failed, dedupe_key, reject_reason, duplicates)
        SELECT kk.sid, kk.at, kk.a, kk.tr, kk.k, kk.p, kk.tok, kk.enc, kk.seq, kk.rcv, kk.ln,
               decode(kk.raw, 'base64'), kk.ev, kk.cat, kk.x, kk.st, kk.df, kk.dk, kk.rr, kk.n
        FROM kept kk
    ),
    touched AS (
        -- An account's first contact, and its last one unless its supervision row (below)
        -- carries it: one row written per contact, not two (at 1,000,000 modules those are
        -- random pages). Readers take the later of accounts' and supervision's last contact.
        UPDATE accounts a SET last_contact_at = GREATEST(a.last_contact_at, t.last_at),
                              first_contact_at = COALESCE(a.first_contact_at, t.first_at)
        FROM unnest(p_contact_accounts, p_contact_first, p_contact_last) AS t(account, first_at, last_at)
        WHERE a.account = t.account AND a.account = ANY (p_contact_accounts)  -- index path always
          AND (a.first_contact_at IS NULL OR NOT (a.account = ANY (p_sup_accounts)))
    ),
    up AS (
        -- Supervision: every contact moves its deadline to the one computed from the account's
        -- latest contact (not the greater of old and new: that kept a 24 h deadline after the
        -- interval became 6 h); a batch whose contact is older than the stored one (several
        -- writers) leaves it. An account in a miss keeps the miss and is returned (its restore
        -- is committed by the engine's follow-up transaction).
        INSERT INTO supervision AS s (account, deadline, last_contact_at)
        SELECT u.a, u.d, c.at
        FROM unnest(p_sup_accounts, p_sup_deadlines) AS u(a, d)
        LEFT JOIN unnest(p_contact_accounts, p_contact_last) AS c(a, at) ON c.a = u.a
        ORDER BY u.a
        ON CONFLICT (account) DO UPDATE
            SET deadline = CASE
                    WHEN EXCLUDED.last_contact_at IS NULL THEN GREATEST(s.deadline, EXCLUDED.deadline)
                    WHEN s.last_contact_at IS NULL OR EXCLUDED.last_contact_at >= s.last_contact_at
                        THEN EXCLUDED.deadline
                    ELSE s.deadline END,
                last_contact_at = GREATEST(s.last_contact_at, EXCLUDED.last_contact_at),
                updated_at = now()
        RETURNING s.account, s.missed
    ),
    decided AS (
        -- Decisions for the stored signals' events (by position, or by the id of a signal an
        -- earlier call stored); a duplicate's are dropped with it.
        INSERT INTO decisions (signal_id, event_index, received_at, account, forward, reason,
                               category, two_way_voice)
        SELECT coalesce(t.s, kk.sid), t.i, t.at, t.a, t.f, t.r, t.c, t.v
        FROM json_to_recordset(p_decisions)
             AS t(o int, s bigint, i smallint, at timestamptz, a text, f bool, r text, c text,
                  v text)
        LEFT JOIN kept kk ON kk.o = t.o
        WHERE coalesce(t.s, kk.sid) IS NOT NULL
    )
    -- (inserted, touched and decided run to completion although nothing reads them)
    SELECT kept_rows.pos, kept_rows.ids, dups.keys, dups.copies,
           (SELECT array_agg(up.account) FROM up WHERE up.missed)
    INTO v_pos, v_ids, v_dkeys, v_dns, v_restores
    FROM (SELECT array_agg(kk.o ORDER BY kk.o) AS pos, array_agg(kk.sid ORDER BY kk.o) AS ids
          FROM kept kk) kept_rows,
         (SELECT array_agg(i.dk) AS keys, array_agg(1 + i.n) AS copies
          FROM input i
          WHERE i.k = 'event' AND i.dk IS NOT NULL
            AND i.dk NOT IN (SELECT c.dedupe_key FROM claim c)) dups;
    v_pos := coalesce(v_pos, '{}');
    v_ids := coalesce(v_ids, '{}');

    RETURN QUERY SELECT 'signal'::text, m.o, m.sid, NULL::text, NULL::timestamptz, NULL::text,
                        NULL::int, NULL::text, NULL::boolean
                 FROM unnest(v_pos, v_ids) AS m(o, sid)
                 UNION ALL
                 SELECT 'restore'::text, NULL::int, NULL::bigint, NULL::text, NULL::timestamptz,
                        r.a, NULL::int, NULL::text, NULL::boolean
                 FROM unnest(v_restores) AS r(a);
    IF v_dkeys IS NOT NULL THEN
        -- Copies received again: their originals (a statement of its own, whose fresh snapshot
        -- also sees an original another engine committed while step 1 waited), counted there.
        SELECT array_agg(d.signal_id ORDER BY m.ord), array_agg(d.received_at ORDER BY m.ord)
        INTO v_dids, v_dats
        FROM unnest(v_dkeys) WITH ORDINALITY AS m(k, ord)
        LEFT JOIN signal_dedupe d ON d.dedupe_key = m.k;
        UPDATE signals s SET duplicates = s.duplicates + m.n
        FROM unnest(v_dids, v_dats, v_dns) AS m(sid, at, n)
        WHERE s.id = m.sid AND s.received_at = m.at;
        RETURN QUERY SELECT 'dup'::text, NULL::int, m.sid, m.k, m.at, NULL::text, NULL::int,
                            NULL::text, NULL::boolean
                     FROM unnest(v_dkeys, v_dids, v_dats) AS m(k, sid, at);
    END IF;

    -- 2. Crash & Smash entry delays closed and opened by the batch's stored signals (0520).
    RETURN QUERY SELECT * FROM ingest_entries(p_opens, p_closes, v_pos);

    -- 3. Outbox rows. The lanes' advisory locks come last (after every row lock: no cycle) and
    --    in their own statement, so the insert's snapshot sees every committed row of those
    --    lanes: two engines committing one lane serialise, and the second leaves its row to the
    --    claim loop. With an owner, a row whose lane is clear (below) is inserted leased to
    --    it: the engine sends it straight after the commit.
    IF p_outbox IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(l.h)
        FROM (SELECT DISTINCT hashtextextended(t.lane, 0) AS h
              FROM json_to_recordset(p_outbox) AS t(o int, s bigint, lane text)
              WHERE t.s IS NOT NULL OR t.o = ANY (v_pos)
              ORDER BY 1) l;
        RETURN QUERY
        WITH queued AS MATERIALIZED (
            -- ids in outbox order (the order per lane): numbered after sorting
            SELECT nextval('deliveries_id_seq') AS did, s.*
            FROM (SELECT coalesce(t.s, m.sid) AS sid, t.*
                  FROM json_to_recordset(p_outbox)
                       AS t(q int, o int, s bigint, i smallint, a text, lane text, sa text,
                            pr smallint, ev jsonb, rx text, bx text, at timestamptz, v bool)
                  LEFT JOIN unnest(v_pos, v_ids) AS m(o, sid) ON m.o = t.o
                  WHERE coalesce(t.s, m.sid) IS NOT NULL
                  ORDER BY t.q) s
        ), clear AS (
            -- A lane is clear for the owner when it has no pending row, or its last pending row
            -- is held by the owner: then every pending row of the lane is. A row is leased at
            -- insert only on a clear lane, the claim loop leases lane heads only, and a failed
            -- head is released, under the lane's lock, with every row of the owner behind it.
            -- One index probe per lane, however long its queue.
            SELECT l.lane FROM (SELECT DISTINCT q.lane FROM queued q) l
            WHERE p_owner IS NOT NULL
              AND NOT EXISTS (
                  SELECT 1 FROM (SELECT p.lease_owner, p.lease_until FROM deliveries p
                                 WHERE p.lane = l.lane AND p.state = 'pending'
                                 ORDER BY p.id DESC LIMIT 1) t
                  WHERE t.lease_owner IS DISTINCT FROM p_owner OR t.lease_until < now())
        ), ins AS (
            INSERT INTO deliveries (id, signal_id, event_index, account, lane, station_account,
                                    priority, event, primary_receiver, backup_receiver, seq,
                                    received_at, two_way_voice, lease_owner, lease_until, attempts)
            SELECT q.did, q.sid, q.i, q.a, q.lane, q.sa, q.pr, q.ev, q.rx, q.bx,
                   lpad((q.did % 9999 + 1)::text, 4, '0'), q.at, q.v,
                   CASE WHEN c.lane IS NOT NULL THEN p_owner END,
                   CASE WHEN c.lane IS NOT NULL THEN now() + p_lease END,
                   CASE WHEN c.lane IS NOT NULL THEN 1 ELSE 0 END
            FROM queued q LEFT JOIN clear c ON c.lane = q.lane
            RETURNING deliveries.id AS did, deliveries.lease_owner IS NOT NULL AS leased
        )
        SELECT 'delivery'::text, q.q, q.did, NULL::text, NULL::timestamptz, NULL::text,
               NULL::int, NULL::text, ins.leased
        FROM queued q JOIN ins ON ins.did = q.did;
    END IF;
END $$;
