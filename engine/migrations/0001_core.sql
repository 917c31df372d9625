-- Core schema: accounts and the signals they send.
--
-- signals is partitioned by day on received_at: at 10M+ signals a day a day's partition is the unit
-- of retention (DROP instead of DELETE) and history queries hit one or two partitions through the
-- (account, received_at) index. Partitions are created ahead by ensure_signal_partitions().

CREATE TABLE accounts (
    account                 text PRIMARY KEY,              -- the DC-09 #acct the module sends
    module_serial           text UNIQUE,                   -- serial or IMEI; the MQTT identity
    name                    text,
    key                     text,                          -- DC-09 AES key as entered
    key_format              text NOT NULL DEFAULT 'hex' CHECK (key_format IN ('hex', 'ascii')),
    timestamp_past_s        integer,
    timestamp_future_s      integer,
    local_time_zone         text,
    supervision_interval_s  integer NOT NULL DEFAULT 86400 CHECK (supervision_interval_s >= 200),
    two_way_voice_capable   boolean NOT NULL DEFAULT false,
    virtual                 boolean NOT NULL DEFAULT false,
    forwarding              jsonb NOT NULL DEFAULT '{}'::jsonb,
    first_contact_at        timestamptz,                   -- set by the engine on the first valid signal
    last_contact_at         timestamptz,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now()
);

CREATE SEQUENCE signals_id_seq AS bigint CACHE 100;

CREATE TABLE signals (
    id              bigint NOT NULL DEFAULT nextval('signals_id_seq'),
    received_at     timestamptz NOT NULL,
    committed_at    timestamptz NOT NULL DEFAULT now(),
    account         text NOT NULL,
    transport       text NOT NULL,                         -- tcp | udp | mqtt | server
    kind            text NOT NULL,                         -- event | rejected
    peer            text,
    token           text,
    encrypted       boolean NOT NULL DEFAULT false,
    seq             text,
    receiver        text,
    line            text,
    raw             bytea,                                 -- as received (encrypted frames stay encrypted)
    events          jsonb NOT NULL DEFAULT '[]'::jsonb,    -- canonical events with their classification
    categories      text[] NOT NULL DEFAULT '{}',
    xdata           jsonb,
    sent_at         timestamptz,                           -- the module's own timestamp
    dedupe_key      text,
    duplicates      integer NOT NULL DEFAULT 0,            -- copies received again and ACKed, not stored
    reject_reason   text,
    PRIMARY KEY (received_at, id)
) PARTITION BY RANGE (received_at);

CREATE INDEX signals_account_time ON signals (account, received_at DESC);
CREATE INDEX signals_id ON signals (id);

-- Duplicate detection across partitions: one row per dedupe key while its window lasts.
CREATE TABLE signal_dedupe (
    dedupe_key   text PRIMARY KEY,
    signal_id    bigint NOT NULL,
    received_at  timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL
);
CREATE INDEX signal_dedupe_expires ON signal_dedupe (expires_at);

CREATE FUNCTION ensure_signal_partitions(days_back integer, days_ahead integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    day date;
    created integer := 0;
    name text;
BEGIN
    FOR day IN SELECT generate_series((now() AT TIME ZONE 'UTC')::date - days_back,
                                      (now() AT TIME ZONE 'UTC')::date + days_ahead, '1 day')::date
    LOOP
        name := 'signals_' || to_char(day, 'YYYYMMDD');
        IF to_regclass(name) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF signals FOR VALUES FROM (%L) TO (%L)',
                name, (day::timestamp AT TIME ZONE 'UTC'), ((day + 1)::timestamp AT TIME ZONE 'UTC'));
            created := created + 1;
        END IF;
    END LOOP;
    RETURN created;
END $$;

CREATE FUNCTION drop_signal_partitions_before(keep_days integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    part record;
    dropped integer := 0;
    cutoff text := 'signals_' || to_char((now() AT TIME ZONE 'UTC')::date - keep_days, 'YYYYMMDD');
BEGIN
    FOR part IN SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                WHERE i.inhparent = 'signals'::regclass AND c.relname ~ '^signals_[0-9]{8}$'
                  AND c.relname < cutoff
    LOOP
        EXECUTE format('DROP TABLE %I', part.relname);
        dropped := dropped + 1;
    END LOOP;
    RETURN dropped;
END $$;

SELECT ensure_signal_partitions(1, 3);
