-- How many DC-09 connections the engine keeps to each receiver: stop-and-wait per connection,
-- so this bounds the deliveries (of different lanes) in flight to that receiver at once.
ALTER TABLE receivers ADD COLUMN connections smallint NOT NULL DEFAULT 4
    CHECK (connections BETWEEN 1 AND 64);
