-- Due work lives in the database, so any replica takes the next due environment and work acknowledged by
-- a replica that dies is taken over when its lease ends.

-- When the environment is next to be reconciled (NULL: nothing to do until something changes). While a
-- replica holds the lease it is the lease's end, so a holder that dies leaves the work due.
ALTER TABLE environments ADD COLUMN due_at BIGINT;
-- 0: someone waits for the result (a webhook, a person); 1: background work (resync, reaper, polls).
ALTER TABLE environments ADD COLUMN due_lane BIGINT NOT NULL DEFAULT 1;
-- Bumped by every request for a reconcile: a holder that finds it moved on release keeps the work due.
ALTER TABLE environments ADD COLUMN due_seq BIGINT NOT NULL DEFAULT 0;
-- Bumped by every claim: the fencing token a holder's writes carry; a write with an older one is refused.
ALTER TABLE environments ADD COLUMN lease_epoch BIGINT NOT NULL DEFAULT 0;
CREATE INDEX environments_due ON environments (due_lane, due_at) WHERE due_at IS NOT NULL;
