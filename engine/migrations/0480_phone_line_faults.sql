-- The phone-line failures of an account kept apart (engine/account_state.py): line 2's restore
-- (Contact ID 352 Q=3) used to end line 1's fault too, and "only if the phone line fails"
-- accounts then had their alarms held back while line 1 was still down. ``phone_line_failed``
-- stays, written with it (true while any failure is not restored), for what reads it.
-- A failure recorded before this has no known cause: "unknown", which any line restore ends
-- (as before).
ALTER TABLE account_state ADD COLUMN line_faults text[] NOT NULL DEFAULT '{}';
UPDATE account_state SET line_faults = '{unknown}' WHERE phone_line_failed;
