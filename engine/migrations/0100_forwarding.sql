-- Forwarding: monitoring stations and their receivers, per-account state, the decision for every
-- event, and the durable delivery outbox.

CREATE TABLE stations (
    name        text PRIMARY KEY,
    own         boolean NOT NULL DEFAULT false,            -- the provider's own monitoring station
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE receivers (
    name                  text PRIMARY KEY,
    station               text NOT NULL REFERENCES stations (name) ON DELETE CASCADE,
    kind                  text NOT NULL DEFAULT 'ip' CHECK (kind IN ('ip', 'phone')),
    host                  text,
    port                  integer CHECK (port BETWEEN 1 AND 65535),
    protocol              text NOT NULL DEFAULT 'tcp' CHECK (protocol IN ('tcp', 'udp')),
    receiver_number       text,                            -- DC-09 R (hex, 1-6)
    line_prefix           text,                            -- DC-09 L (hex, 1-6)
    key                   text,
    key_format            text NOT NULL DEFAULT 'hex' CHECK (key_format IN ('hex', 'ascii')),
    families              text NOT NULL DEFAULT 'both' CHECK (families IN ('cid', 'sia', 'both')),
    two_way_voice         boolean NOT NULL DEFAULT false,
    null_poll_interval_s  real NOT NULL DEFAULT 60,
    ack_timeout_s         real NOT NULL DEFAULT 5,
    phone_number          text,                            -- phone receivers: stored, not deliverable
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    CHECK (kind = 'phone' OR (host IS NOT NULL AND port IS NOT NULL))
);

CREATE TABLE account_state (
    account               text PRIMARY KEY,
    phone_line_failed     boolean NOT NULL DEFAULT false,
    panel_not_responding  boolean NOT NULL DEFAULT false,
    updated_at            timestamptz NOT NULL DEFAULT now()
);

-- One row per event of every committed event signal: forwarded or not, and why.
CREATE TABLE decisions (
    signal_id      bigint NOT NULL,
    event_index    smallint NOT NULL,
    received_at    timestamptz NOT NULL,
    account        text NOT NULL,
    forward        boolean NOT NULL,
    reason         text NOT NULL,
    category       text NOT NULL,
    two_way_voice  text NOT NULL DEFAULT 'none',
    decided_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (signal_id, event_index)
);
CREATE INDEX decisions_account_time ON decisions (account, received_at DESC);

-- The outbox. A lane is one station account at one receiver group: deliveries in a lane go out
-- strictly in id (= ingest) order, each waiting for the previous one's ACK or dead-letter.
CREATE TABLE deliveries (
    id                bigserial PRIMARY KEY,
    signal_id         bigint NOT NULL,
    event_index       smallint NOT NULL,
    account           text NOT NULL,
    lane              text NOT NULL,
    station_account   text NOT NULL,
    priority          smallint NOT NULL,                   -- 0 alarms, panics, fire; 1 routine
    event             jsonb NOT NULL,
    primary_receiver  text NOT NULL,
    backup_receiver   text,
    state             text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts          integer NOT NULL DEFAULT 0,
    seq               text NOT NULL,                       -- kept for every retransmission
    receiver_used     text,
    family_sent       text,
    received_at       timestamptz NOT NULL,
    committed_at      timestamptz NOT NULL DEFAULT now(),
    first_sent_at     timestamptz,
    acked_at          timestamptz,
    next_attempt_at   timestamptz NOT NULL DEFAULT now(),
    last_error        text,
    lease_owner       text,
    lease_until       timestamptz,
    UNIQUE (signal_id, event_index)
);
CREATE INDEX deliveries_pending_lane ON deliveries (lane, id) WHERE state = 'pending';
CREATE INDEX deliveries_account ON deliveries (account, id);

CREATE FUNCTION notify_receivers_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('alarmrelay_receivers', '');
    RETURN NULL;
END $$;
CREATE TRIGGER receivers_notify AFTER INSERT OR UPDATE OR DELETE ON receivers
    FOR EACH STATEMENT EXECUTE FUNCTION notify_receivers_change();
