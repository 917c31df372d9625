-- Virtual modules: the engine simulates the module of a virtual customer (demos, training).
ALTER TABLE signals DROP CONSTRAINT signals_transport_check;
ALTER TABLE signals ADD CONSTRAINT signals_transport_check
    CHECK (transport IN ('tcp', 'udp', 'mqtt', 'server', 'virtual'));

CREATE INDEX accounts_virtual ON accounts (account) WHERE virtual;

-- When each virtual module checks in next (rows follow accounts.virtual; see engine/virtual_modules.py).
CREATE TABLE virtual_schedule (
    account          text PRIMARY KEY,
    next_checkin_at  timestamptz NOT NULL
);
CREATE INDEX virtual_schedule_due ON virtual_schedule (next_checkin_at);

-- "Send this signal from the virtual module": an MQTT events payload (docs/mqtt.md), queued by the
-- admin API and sent once by one engine through the ingest pipeline.
CREATE TABLE virtual_requests (
    id            bigserial PRIMARY KEY,
    account       text NOT NULL,
    customer_id   bigint,
    payload       jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    done_at       timestamptz,
    result        text,                                   -- accepted / duplicate / why not sent
    signal_at     timestamptz                             -- the signal's received_at
);
CREATE INDEX virtual_requests_pending ON virtual_requests (id) WHERE done_at IS NULL;
CREATE INDEX virtual_requests_customer ON virtual_requests (customer_id, id);
