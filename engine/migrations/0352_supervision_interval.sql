-- Supervision deadlines follow the module's current interval: when an account's interval changes
-- (accounts import, the package API, any UPDATE), its pending deadline moves by the difference at
-- once (deadline = last contact + interval + grace, and only the interval changed). A deadline
-- moved into the past fires on the timer's next round.
CREATE FUNCTION supervision_follow_interval() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE supervision
       SET deadline = deadline + make_interval(secs => NEW.supervision_interval_s - OLD.supervision_interval_s),
           updated_at = now()
     WHERE account = NEW.account AND NOT missed;
    RETURN NULL;
END
$$;

CREATE TRIGGER accounts_supervision_interval
    AFTER UPDATE OF supervision_interval_s ON accounts
    FOR EACH ROW WHEN (OLD.supervision_interval_s IS DISTINCT FROM NEW.supervision_interval_s)
    EXECUTE FUNCTION supervision_follow_interval();
