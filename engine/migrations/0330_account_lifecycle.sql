-- Account lifecycle: customers can be terminated (the module stops being accepted, history stays),
-- and each account may override the panel's dialer delay used by Crash & Smash.
ALTER TABLE customers DROP CONSTRAINT customers_status_check;
ALTER TABLE customers ADD CONSTRAINT customers_status_check
    CHECK (status IN ('active', 'commitment', 'terminated'));
ALTER TABLE customers ADD COLUMN terminated_at timestamptz;
ALTER TABLE customers ADD COLUMN billing_ended_at timestamptz;

ALTER TABLE accounts ADD COLUMN dialer_delay_s integer CHECK (dialer_delay_s BETWEEN 0 AND 600);

DROP TRIGGER accounts_notify_update ON accounts;
CREATE TRIGGER accounts_notify_update
    AFTER UPDATE OF account, module_serial, name, key, key_format, timestamp_past_s, timestamp_future_s,
        local_time_zone, supervision_interval_s, two_way_voice_capable, virtual, forwarding, dialer_delay_s
    ON accounts FOR EACH ROW EXECUTE FUNCTION notify_account_change();

-- A terminated customer's DC-09 account number may be given to a new customer: unique only among
-- the customers that are not terminated (history is told apart by each customer's lifetime).
ALTER TABLE customers DROP CONSTRAINT customers_account_key;
CREATE UNIQUE INDEX customers_account_live ON customers (account) WHERE status <> 'terminated';
