-- Supervision: one deadline per module. Any valid contact pushes it to contact + interval + grace;
-- the timer raises Panel Not Responding once when it passes (missed), and the next contact
-- restores it. Only rows that can fire are in the partial index the timer reads.
CREATE TABLE supervision (
    account     text PRIMARY KEY,
    deadline    timestamptz NOT NULL,
    missed      boolean NOT NULL DEFAULT false,
    missed_at   timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX supervision_due ON supervision (deadline) WHERE NOT missed;
