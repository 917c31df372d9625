-- 0001 core schema: accounts and the signals they send.
--
-- Sized for 10M+ signals a day (~120/s average, bursts far higher):
-- * signals is partitioned by day on received_at (UTC). A day is the unit of retention (DROP TABLE,
--   not DELETE: no bloat, no vacuum storm) and history queries touch one or two partitions through
--   the (account, received_at DESC) index. ensure_signal_partitions() creates days ahead; the engine
--   calls it at start and from its maintenance job. A DEFAULT partition catches anything outside the
--   created days (a clock jump, a missed job) so a signal is never refused for want of a partition.
-- * Duplicate detection needs a lookup across partitions, so it has its own small unpartitioned
--   table (signal_dedupe) keyed by the listener's dedupe key, cleaned up when entries expire.
-- * Group commit writes a batch with a few set-based statements (engine/store/signals.py).

CREATE TABLE accounts (
    account                 text PRIMARY KEY CHECK (account = upper(account) AND account <> ''),
    module_serial           text UNIQUE,                   -- serial or IMEI; the MQTT identity (NULLs allowed many times)
    name                    text,
    key                     text,                          -- DC-09 AES key as entered (never logged)
    key_format              text NOT NULL DEFAULT 'hex' CHECK (key_format IN ('hex', 'ascii')),
    timestamp_past_s        integer CHECK (timestamp_past_s >= 0),
    timestamp_future_s      integer CHECK (timestamp_future_s >= 0),
    local_time_zone         text,                          -- IANA zone when the panel sends local time
    supervision_interval_s  integer NOT NULL DEFAULT 86400 CHECK (supervision_interval_s >= 200),
    two_way_voice_capable   boolean NOT NULL DEFAULT false,
    virtual                 boolean NOT NULL DEFAULT false,
    -- engine.account_model.ForwardingSettings as msgspec encodes it. Kept as one document because
    -- the engine loads it whole into its account directory; the admin API may add expression
    -- indexes (e.g. on forwarding->>'primary_receiver') when it needs to search by them.
    forwarding              jsonb NOT NULL DEFAULT '{}'::jsonb,
    first_contact_at        timestamptz,                   -- set by the engine on the first valid signal
    last_contact_at         timestamptz,                   -- any valid signal, link test or check-in
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 80);  -- room for HOT updates: every batch moves last_contact_at forward

CREATE SEQUENCE signals_id_seq AS bigint CACHE 100;

CREATE TABLE signals (
    id              bigint NOT NULL DEFAULT nextval('signals_id_seq'),
    received_at     timestamptz NOT NULL,                  -- our clock when the frame/message arrived
    committed_at    timestamptz NOT NULL DEFAULT now(),    -- the group-commit transaction's time
    account         text NOT NULL,                         -- the module's DC-09 #acct
    transport       text NOT NULL CHECK (transport IN ('tcp', 'udp', 'mqtt', 'server')),
    kind            text NOT NULL CHECK (kind IN ('event', 'rejected')),  -- link tests/check-ins only touch accounts
    peer            text,                                  -- "ip:port" or MQTT client/serial
    token           text,                                  -- DC-09 ID token without '*'
    encrypted       boolean NOT NULL DEFAULT false,
    seq             text,
    receiver        text,
    line            text,
    raw             bytea,                                 -- as received (encrypted frames stay encrypted)
    events          jsonb NOT NULL DEFAULT '[]'::jsonb,    -- list of protocols.signal.Event as msgspec encodes them
    categories      text[] NOT NULL DEFAULT '{}',          -- each event's forwarding category, in order
    xdata           jsonb,                                 -- list of {id, value}
    sent_at         timestamptz,                           -- the module's own timestamp
    dialer_failed   boolean NOT NULL DEFAULT false,        -- the panel's own dialer could not deliver it
    dedupe_key      text,
    duplicates      integer NOT NULL DEFAULT 0,            -- copies received again in the window: ACKed, not stored
    reject_reason   text,                                  -- kind = 'rejected' only
    PRIMARY KEY (received_at, id)
) PARTITION BY RANGE (received_at);

CREATE INDEX signals_account_time ON signals (account, received_at DESC);  -- an account's history
CREATE INDEX signals_id ON signals (id);                                   -- a signal by id (API, later stages)

CREATE TABLE signals_default PARTITION OF signals DEFAULT;

-- Duplicate detection across partitions: one row per dedupe key while its window lasts.
CREATE TABLE signal_dedupe (
    dedupe_key   text PRIMARY KEY,
    signal_id    bigint NOT NULL,
    received_at  timestamptz NOT NULL,                     -- with signal_id: the original's primary key
    expires_at   timestamptz NOT NULL
);
CREATE INDEX signal_dedupe_expires ON signal_dedupe (expires_at);

-- Create the daily partitions from days_back before today (UTC) to days_ahead after it.
-- Returns how many were created. A day whose rows already sit in signals_default is skipped (its
-- rows stay queryable there; retention deletes them from the default partition).
CREATE FUNCTION ensure_signal_partitions(days_ahead integer, days_back integer DEFAULT 1) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    day date;
    created integer := 0;
    part text;
    lower_bound timestamptz;
    upper_bound timestamptz;
BEGIN
    FOR day IN SELECT generate_series((now() AT TIME ZONE 'UTC')::date - days_back,
                                      (now() AT TIME ZONE 'UTC')::date + days_ahead, '1 day')::date
    LOOP
        part := 'signals_' || to_char(day, 'YYYYMMDD');
        CONTINUE WHEN to_regclass(part) IS NOT NULL;
        lower_bound := day::timestamp AT TIME ZONE 'UTC';
        upper_bound := (day + 1)::timestamp AT TIME ZONE 'UTC';
        CONTINUE WHEN EXISTS (SELECT 1 FROM signals_default
                              WHERE received_at >= lower_bound AND received_at < upper_bound);
        EXECUTE format('CREATE TABLE %I PARTITION OF signals FOR VALUES FROM (%L) TO (%L)',
                       part, lower_bound, upper_bound);
        created := created + 1;
    END LOOP;
    RETURN created;
END $$;

-- Retention: drop the daily partitions wholly older than keep_days, and delete old rows that landed
-- in the default partition. Returns the number of partitions dropped.
CREATE FUNCTION drop_signal_partitions_before(keep_days integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    part record;
    dropped integer := 0;
    cutoff_day date := (now() AT TIME ZONE 'UTC')::date - keep_days;
BEGIN
    FOR part IN SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                WHERE i.inhparent = 'signals'::regclass AND c.relname ~ '^signals_[0-9]{8}$'
                  AND c.relname < 'signals_' || to_char(cutoff_day, 'YYYYMMDD')
                ORDER BY c.relname
    LOOP
        EXECUTE format('DROP TABLE %I', part.relname);
        dropped := dropped + 1;
    END LOOP;
    DELETE FROM signals_default WHERE received_at < cutoff_day::timestamp AT TIME ZONE 'UTC';
    RETURN dropped;
END $$;

SELECT ensure_signal_partitions(3);

-- Room for later stages (separate migrations, not built here):
-- * decisions: one row per signal and decision (forwarded or not, and the first failing
--   reason), keyed by (signal received_at, signal id), written in the same group-commit transaction.
-- * delivery outbox: per station account, ordered, claimed with FOR UPDATE SKIP LOCKED by the
--   delivery workers; delivery attempts with timings; dead letters.
-- * durable timers (supervision, crash & smash) claimed with SKIP LOCKED; account state
--   (phone line failed, pending entry) next to them.
