-- Claims and completions that do not take turns. Until 0005, a job had one cursor row and
-- every completion updated its job's and its (lane, tenant)'s counter rows: claims from
-- several replicas waited on each other at the cursors of the tenants they served, and
-- completions at the counters, each holding the rows until it committed.
--
--   job_cursors   a job's range 1..items_total is cut into stripes, a cursor row each
--                 (stripe 0 first). A claim takes the first stripes it can lock and skips
--                 those another claim holds, so claims run side by side; a job's items
--                 go out in order while one claim at a time serves it. The row carries
--                 the job's provider, model and operation, which a claim hands out with
--                 each item, so that a claim reads no `jobs` row.
--   count_moves   a completion records what it finished here, one row per (job, lane,
--                 tenant) and statement, and locks no counter. `fold_count_moves` moves
--                 them into jobs.n_done and queue_counts.unfinished (and finishes the
--                 jobs they complete) in batches; readers add what is not folded yet
--                 (`queue_unfinished` for the queue counters).

ALTER TABLE job_cursors RENAME COLUMN total TO last_seq;       -- the stripe ends at this seq
ALTER TABLE job_cursors ADD COLUMN stripe smallint NOT NULL DEFAULT 0;
ALTER TABLE job_cursors ALTER COLUMN stripe DROP DEFAULT;
ALTER TABLE job_cursors ADD COLUMN provider text, ADD COLUMN model text, ADD COLUMN operation text;
UPDATE job_cursors c SET provider = j.provider, model = j.model, operation = j.operation
FROM jobs j WHERE j.id = c.job_id;
ALTER TABLE job_cursors ALTER COLUMN provider SET NOT NULL, ALTER COLUMN model SET NOT NULL,
    ALTER COLUMN operation SET NOT NULL;
ALTER TABLE job_cursors DROP CONSTRAINT job_cursors_pkey;
ALTER TABLE job_cursors ADD PRIMARY KEY (job_id, stripe);
DROP INDEX job_cursors_next;
CREATE INDEX job_cursors_next ON job_cursors (lane, tenant_id, priority DESC, job_seq, stripe);

-- A job with an item waiting for another attempt has started: its status is not PENDING.
ALTER TABLE retries ADD COLUMN job_id uuid;
UPDATE retries r SET job_id = i.job_id FROM items i WHERE i.id = r.item_id;
ALTER TABLE retries ALTER COLUMN job_id SET NOT NULL;
CREATE INDEX retries_job ON retries (job_id);

CREATE TABLE count_moves (
    tenant_id    text NOT NULL,
    lane         text NOT NULL,
    job_id       uuid NOT NULL,
    n_done       integer NOT NULL CHECK (n_done > 0)
);
CREATE INDEX count_moves_owner ON count_moves (tenant_id, lane, job_id);

-- What every reader of the queue counters means by unfinished: the counter less the
-- completions not folded into it yet. (A filter on tenant_id reaches count_moves too.)
CREATE VIEW queue_unfinished AS
SELECT q.lane, q.tenant_id, q.unfinished - coalesce(m.n, 0) AS unfinished
FROM queue_counts q LEFT JOIN (
    SELECT lane, tenant_id, sum(n_done) AS n FROM count_moves GROUP BY lane, tenant_id
) m USING (lane, tenant_id);
