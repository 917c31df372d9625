-- Two-way voice: a forwarded fire/CO alarm on an account with the option asks for a listen-in
-- (Contact ID 606 / SIA LF) to the same receiver after delivery, and a voice-session command to
-- the module; the session is recorded on the delivery.
ALTER TABLE deliveries ADD COLUMN two_way_voice boolean NOT NULL DEFAULT false;
ALTER TABLE deliveries ADD COLUMN voice_session_at timestamptz;
ALTER TABLE deliveries ADD COLUMN voice_session_error text;
