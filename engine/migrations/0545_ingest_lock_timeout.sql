-- A group commit waits at most 500 ms for a lock (engine/store/ingest_batch.py,
-- INGEST_LOCK_TIMEOUT; a test checks that the two agree).
--
-- Why: one call writes the rows of many accounts (supervision deadlines, last contacts, entry
-- delays). A row of one of them held by another transaction (an operator's open transaction in
-- psql, a stuck admin call, a migration) kept the whole call waiting until
-- database.command_timeout_s, and every other module of the batch unacknowledged with it, batch
-- after batch. Past this timeout the call fails with lock_not_available (55P03): the engine finds
-- the accounts whose rows are held (without waiting: SKIP LOCKED), commits the others at once and
-- retries the held ones apart (engine/pipeline.py).
--
-- The timeout is the function's own setting (applied during the call, restored after), so the
-- normal path costs nothing more: no extra statement, no extra lock. 500 ms is above the waits
-- the engine itself causes (another engine's commit of the same account, a timer's transaction,
-- a partition change, which gives up after 500 ms) and below the second a fire alarm has.
-- Migrations are append-only and the body is unchanged: only the setting is added.
ALTER FUNCTION ingest_batch(json, interval, text[], timestamptz[], timestamptz[], text[],
                            timestamptz[], json, json, json, json, text, interval)
    SET lock_timeout = '500ms';
