-- Each failed delivery attempt, kept on its delivery (newest last, at most the latest 20), so an
-- account's signal history shows every attempt: these failures, then the final outcome
-- (acked_at / receiver_used, or the dead letter). Written by the failure path's existing UPDATE
-- (engine/delivery.py), so it costs no extra round trip. Nullable without default: adding it does
-- not rewrite the table.
ALTER TABLE deliveries ADD COLUMN failed_attempts jsonb;
