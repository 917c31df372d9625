-- The account a receiver's NULL link tests carry (receivers/dc09_client.py). Some receivers
-- ignore frames from accounts they do not know (FIELD_NOTES: the account must be created on a
-- Bosch D6600 first), so a poll from 0000 was never answered: the link looked down for ever,
-- AlarmrelayReceiverDown stayed on and a failed-over group never failed back. '0000' stays the
-- default.
ALTER TABLE receivers ADD COLUMN poll_account text NOT NULL DEFAULT '0000';
