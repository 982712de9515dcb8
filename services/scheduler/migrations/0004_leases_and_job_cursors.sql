-- A claim writes no item row. Until 0003 a claim updated every item it handed out
-- (status, lease, attempts), and each such update wrote a new row version and an entry in
-- four indexes on a table as large as the backlog: with many tenants, one page per item,
-- read and written back with a full-page image after each checkpoint. Now the dispatch
-- state lives in three small tables:
--
--   job_cursors  a job's items are a dense range seq 1..total, dispatched in order, so
--                "what is left to dispatch" is one number per job: `dispatched`. A claim
--                advances it (or deletes the row when the job is fully dispatched).
--   leases       one row per item in flight: the fencing token, holder, attempt, expiry.
--                Predictor capacity bounds it, whatever the backlog.
--   retries      items waiting for another attempt (failed with a retry, lease expired,
--                never delivered), each with the time its backoff ends.
--
-- An item row changes when it finishes, is retried or is canceled. Its `status` is
-- PENDING until it finishes; an item with a row in `leases` is PROCESSING.

ALTER SEQUENCE leases RENAME TO lease_numbers;

CREATE TABLE job_cursors (
    job_id       uuid PRIMARY KEY REFERENCES jobs (id),
    lane         text NOT NULL,
    tenant_id    text NOT NULL,
    priority     integer NOT NULL,
    job_seq      bigint NOT NULL,                 -- submit order among the tenant's jobs
    dispatched   integer NOT NULL DEFAULT 0,      -- items seq 1..dispatched have been handed out
    total        integer NOT NULL,
    created_at   timestamptz NOT NULL,
    CHECK (dispatched >= 0 AND dispatched < total)
) WITH (fillfactor = 70);                         -- room for the cursor's HOT updates
CREATE INDEX job_cursors_next ON job_cursors (lane, tenant_id, priority DESC, job_seq);

CREATE TABLE leases (
    item_id      uuid PRIMARY KEY,
    lease        bigint NOT NULL,                 -- fencing token: every change matches it
    job_id       uuid NOT NULL,
    tenant_id    text NOT NULL,
    lane         text NOT NULL,
    worker       text NOT NULL,
    attempt      integer NOT NULL,
    leased_until timestamptz NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    change_seq   bigint NOT NULL DEFAULT nextval('item_changes')
) WITH (fillfactor = 70);                         -- heartbeats are HOT updates
-- In flight per tenant (max_concurrency, statistics) and per job (counts, events).
CREATE INDEX leases_tenant_job ON leases (tenant_id, job_id);

CREATE TABLE retries (
    item_id      uuid PRIMARY KEY,
    lane         text NOT NULL,
    tenant_id    text NOT NULL,
    priority     integer NOT NULL,
    run_after    timestamptz NOT NULL
);
CREATE INDEX retries_due ON retries (lane, tenant_id, priority DESC, run_after);

-- Items in flight become leases; their row keeps the attempts that have ended.
INSERT INTO leases (item_id, lease, job_id, tenant_id, lane, worker, attempt, leased_until, started_at, change_seq)
SELECT id, lease, job_id, tenant_id, lane, coalesce(worker, ''), attempts,
       coalesce(leased_until, now()), coalesce(started_at, now()), change_seq
FROM items WHERE status = 'PROCESSING';
UPDATE items SET status = 'PENDING', attempts = greatest(attempts - 1, 0) WHERE status = 'PROCESSING';

-- Each unfinished job's cursor goes past every item that was ever handed out; the pending
-- ones among those wait in `retries` (with their backoff), so none is dispatched twice.
CREATE TEMP TABLE job_marks ON COMMIT DROP AS
SELECT j.id, j.lane, j.tenant_id, j.priority, j.seq, j.items_total, j.created_at,
       coalesce(max(i.seq) FILTER (WHERE i.status <> 'PENDING' OR i.attempts > 0
                                   OR i.id IN (SELECT item_id FROM leases)), 0) AS through
FROM jobs j JOIN items i ON i.job_id = j.id
WHERE j.finished_at IS NULL AND NOT j.canceled
GROUP BY j.id;

INSERT INTO retries (item_id, lane, tenant_id, priority, run_after)
SELECT i.id, i.lane, i.tenant_id, i.priority, i.run_after
FROM job_marks m JOIN items i ON i.job_id = m.id AND i.seq <= m.through
WHERE i.status = 'PENDING' AND i.id NOT IN (SELECT item_id FROM leases);

INSERT INTO job_cursors (job_id, lane, tenant_id, priority, job_seq, dispatched, total, created_at)
SELECT id, lane, tenant_id, priority, seq, through, items_total, created_at
FROM job_marks WHERE through < items_total;

DROP INDEX items_ready;
DROP INDEX items_in_flight;
DROP INDEX items_pending_age;
ALTER TABLE items DROP CONSTRAINT items_status_check;
ALTER TABLE items ADD CONSTRAINT items_status_check CHECK (status IN ('PENDING', 'DONE', 'FAILED', 'CANCELED'));
ALTER TABLE items DROP COLUMN lease, DROP COLUMN worker, DROP COLUMN leased_until, DROP COLUMN run_after;
-- A job is now marked finished by the statement that finishes its last item; before, by a
-- statement of its own afterwards, which a crash in between could skip.
UPDATE jobs SET finished_at = now(), updated_at = now()
WHERE finished_at IS NULL AND n_done + n_failed + n_canceled = items_total;
