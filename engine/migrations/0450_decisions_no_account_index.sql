-- Decisions are read through their signal (the history API joins them by signal id; an
-- account's signals are found by signals (account, received_at)); nothing reads them by account.
-- The by-account index cost every event one more index entry in the group commit, at a random
-- place among the accounts (bench.batch_cost, 8 paired runs: about 6 µs of PostgreSQL's ~80 µs
-- per signal). An account's decisions over a period, for a person:
--   SELECT d.* FROM signals s JOIN decisions d ON d.signal_id = s.id
--   WHERE s.account = '1234' AND s.received_at >= now() - interval '1 day';
DROP INDEX IF EXISTS decisions_account_time;
