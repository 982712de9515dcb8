-- Counters that a claim does not touch. A claim moves an item from queued to in flight;
-- when both numbers were stored, every claim and every completion of a tenant updated the
-- same (lane, tenant) row and the same job row, and concurrent claimers queued on them.
-- Now the stored numbers change only when an item is submitted or finishes:
--   queue_counts.unfinished   queued + in flight, per (lane, tenant)
--   jobs.n_done/n_failed/n_canceled (queued + in flight = items_total minus those)
-- and "in flight" is counted from the items holding a lease, through the index below,
-- which predictor capacity keeps small whatever the backlog.

ALTER TABLE queue_counts ADD COLUMN unfinished bigint NOT NULL DEFAULT 0 CHECK (unfinished >= 0);
UPDATE queue_counts SET unfinished = pending + processing;
DELETE FROM queue_counts WHERE unfinished = 0;
ALTER TABLE queue_counts DROP COLUMN pending, DROP COLUMN processing;

ALTER TABLE jobs DROP COLUMN n_pending, DROP COLUMN n_processing;

-- Items in flight (lease IS NOT NULL exactly while PROCESSING): per tenant for
-- max_concurrency and queue statistics, per job for job counts, and for the reaper. It
-- replaces the reaper's index on leased_until, so that a heartbeat, which changes only
-- leased_until, changes no indexed column and can be a HOT update.
DROP INDEX items_leased;
CREATE INDEX items_in_flight ON items (tenant_id, lane, job_id) WHERE lease IS NOT NULL;
