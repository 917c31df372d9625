-- Crash & Smash: a fired entry names the alarm it raised (the server-generated signal), so the
-- entry in the account's state leads to that signal's decision and delivery. Meaningful while
-- state = 'fired' (a later entry delay on the partition reopens the row).
ALTER TABLE pending_entries ADD COLUMN fired_signal_id bigint;
