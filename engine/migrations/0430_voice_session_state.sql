-- Two-way voice: the outcome of each session on the alarm's delivery (engine/voice_session.py).
--   started           listen-in acknowledged by the alarm's receiver, module command published
--   incomplete        one of the two failed (voice_session_error says which and why)
--   command_retrying  the module command failed and is being retried (left so if the engine
--                     stopped during its retries)
--   not_started       the receiver that acknowledged the alarm has no two-way voice (a backup
--                     after a failover) or is gone: no listen-in, no command
-- voice_command_attempts counts the command's publish attempts.
ALTER TABLE deliveries ADD COLUMN voice_session_state text
    CHECK (voice_session_state IN ('started', 'incomplete', 'command_retrying', 'not_started'));
ALTER TABLE deliveries ADD COLUMN voice_command_attempts smallint NOT NULL DEFAULT 0;
