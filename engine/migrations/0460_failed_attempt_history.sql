-- A delivery's failed attempts (``deliveries.failed_attempts``, migration 0400) are appended by two
-- statements: the failure path (engine/delivery.py) and the outcome of a delivery whose primary
-- failed before its backup answered (engine/outcome_writer.py). One function keeps the rule, newest
-- last and the latest 20 kept, in one place.
CREATE FUNCTION failed_attempts_append(history jsonb, at timestamptz, receiver text, error text)
RETURNS jsonb LANGUAGE sql STABLE AS $$  -- (timestamptz as JSON text follows the session time zone)
    SELECT CASE WHEN jsonb_array_length(coalesce(history, '[]')) >= 20
                THEN history - 0 ELSE coalesce(history, '[]') END
           || jsonb_build_array(jsonb_build_object('at', at, 'receiver', receiver, 'error', error))
$$;
