-- Tell running engines when an account's configuration changes, so their in-memory directory is
-- refreshed at once. Contact-time updates (first/last contact) do not notify.
CREATE FUNCTION notify_account_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('alarmrelay_accounts', OLD.account);
        RETURN OLD;
    END IF;
    PERFORM pg_notify('alarmrelay_accounts', NEW.account);
    IF TG_OP = 'UPDATE' AND OLD.account <> NEW.account THEN
        PERFORM pg_notify('alarmrelay_accounts', OLD.account);
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER accounts_notify_insert_delete
    AFTER INSERT OR DELETE ON accounts FOR EACH ROW EXECUTE FUNCTION notify_account_change();
CREATE TRIGGER accounts_notify_update
    AFTER UPDATE OF account, module_serial, name, key, key_format, timestamp_past_s, timestamp_future_s,
        local_time_zone, supervision_interval_s, two_way_voice_capable, virtual, forwarding
    ON accounts FOR EACH ROW EXECUTE FUNCTION notify_account_change();
