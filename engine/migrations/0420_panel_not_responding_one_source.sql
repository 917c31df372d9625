-- Panel Not Responding has one source of truth: supervision.missed (with missed_at), set in the
-- transaction that commits the miss and cleared in the one that commits its restore. The copy in
-- account_state was read and written back by the forwarding stage but never set by supervision,
-- so it could only disagree; the policy never used it (server-generated signals need only rules
-- 1 and 2). Engines before this migration read the column: upgrade every engine process together.
ALTER TABLE account_state DROP COLUMN panel_not_responding;
