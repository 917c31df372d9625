-- Crash & Smash: one pending entry timer per account and partition.
CREATE TABLE pending_entries (
    account        text NOT NULL,
    partition      integer NOT NULL,
    zone           integer,
    deadline       timestamptz NOT NULL,
    state          text NOT NULL CHECK (state IN ('pending', 'closed', 'fired')),
    opened_at      timestamptz NOT NULL DEFAULT now(),
    closed_at      timestamptz,
    closed_reason  text,
    PRIMARY KEY (account, partition)
);
CREATE INDEX pending_entries_due ON pending_entries (deadline) WHERE state = 'pending';
