-- The contact a supervision deadline was computed from (written by ingest_batch, 0355). A contact
-- moves the deadline only if it is not older than that one (batches from several writers may
-- commit out of order), and then to its own deadline, so a shorter interval (the 6-hour add-on,
-- a per-account value) applies from the next contact on. Nullable without default: adding it
-- does not rewrite the table; a row without it is moved on as before (the later deadline wins).
ALTER TABLE supervision ADD COLUMN last_contact_at timestamptz;
