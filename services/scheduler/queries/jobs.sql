-- Submit, read and list jobs and items. Loaded once by `services/scheduler/sql.py`.

-- name: lock_tenant
-- First statement of a submit: the tenant row lock serializes the tenant's submits, so the
-- queue limit and the credit balance are checked and changed without a race.
-- Queued = unfinished - in flight.
SELECT id, max_queued, credits,
       (coalesce((SELECT sum(unfinished) FROM queue_unfinished q WHERE q.tenant_id = t.id), 0)
        - (SELECT count(*) FROM leases l WHERE l.tenant_id = t.id))::bigint AS queued
FROM tenants t WHERE id = $1 FOR UPDATE OF t;

-- name: job_by_idempotency_key
SELECT id, request_hash FROM jobs WHERE tenant_id = $1 AND idempotency_key = $2;

-- name: reserve_credits
UPDATE tenants SET credits = credits - $2 WHERE id = $1 AND credits >= $2 RETURNING credits;

-- name: ledger_reserve
INSERT INTO credit_ledger (tenant_id, kind, amount, job_id) VALUES ($1, 'reserve', $2, $3);

-- name: insert_job
INSERT INTO jobs (id, tenant_id, provider, model, operation, lane, priority, metadata,
                  items_total, idempotency_key, request_hash)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9, $10, $11)
RETURNING seq, created_at;

-- name: insert_items
INSERT INTO items (id, job_id, tenant_id, lane, priority, seq, ref, input, est_tokens, cost)
SELECT gen_random_uuid(), $1, $2, $3, $4, u.seq, u.ref, u.input, u.est, $5
FROM unnest($6::text[], $7::text[], $8::int[]) WITH ORDINALITY AS u(ref, input, est, seq);

-- name: open_job_cursor
-- The job's items (seq 1..$6) are dispatched from here, in stripes: one per 256 items, at
-- most 8, so that up to 8 claims serve the job side by side. `job_seq` was taken under the
-- tenant lock, so it orders the tenant's jobs as they were submitted.
INSERT INTO job_cursors (job_id, stripe, lane, tenant_id, priority, job_seq, dispatched, last_seq, created_at,
                         provider, model, operation)
SELECT $1, s, $2, $3, $4, $5, ($6::bigint * s / k)::int, ($6::bigint * (s + 1) / k)::int, $7,
       j.provider, j.model, j.operation
FROM jobs j, (SELECT least(8, ($6 + 255) / 256) AS k) c, generate_series(0, c.k - 1) s
WHERE j.id = $1;

-- name: count_submitted
-- Last statement of a submit, so that the counter row is locked only for a moment.
INSERT INTO queue_counts (lane, tenant_id, unfinished) VALUES ($1, $2, $3)
ON CONFLICT (lane, tenant_id) DO UPDATE SET unfinished = queue_counts.unfinished + excluded.unfinished;

-- name: notify_backlog
SELECT pg_notify('fairway_backlog', $1);

-- name: get_job
-- Queued and in-flight counts are derived: the job row changes only when items finish.
SELECT * FROM job_progress WHERE id = $1 AND ($2 = '' OR tenant_id = $2);

-- name: list_jobs
-- A job is PENDING while none of its items has started: none finished, none in flight and
-- none waiting for another attempt. A canceled job is CANCELED from the cancel on, while
-- its items in flight finish.
SELECT * FROM job_progress
WHERE ($1 = '' OR tenant_id = $1) AND seq < $2
  AND ($3 = '' OR CASE $3
        WHEN 'PENDING' THEN finished_at IS NULL AND NOT canceled AND n_pending = items_total AND NOT retrying
        WHEN 'PROCESSING' THEN finished_at IS NULL AND NOT canceled AND (n_pending < items_total OR retrying)
        WHEN 'DONE' THEN finished_at IS NOT NULL AND NOT canceled AND n_failed = 0
        WHEN 'FAILED' THEN finished_at IS NOT NULL AND NOT canceled AND n_failed > 0
        WHEN 'CANCELED' THEN canceled END)
ORDER BY seq DESC LIMIT $4;

-- name: list_items
-- An item holding a lease is PROCESSING, in the attempt the lease counts.
SELECT i.id, i.job_id, i.ref, CASE WHEN l.item_id IS NULL THEN i.status ELSE 'PROCESSING' END AS status,
       coalesce(l.attempt, i.attempts) AS attempts, i.output, i.error, i.usage, i.seq,
       i.created_at, coalesce(i.started_at, l.started_at) AS started_at, i.finished_at
FROM items i LEFT JOIN leases l ON l.item_id = i.id
WHERE i.job_id = $1 AND i.seq > $2
  AND ($3 = '' OR $3 = CASE WHEN l.item_id IS NULL THEN i.status ELSE 'PROCESSING' END)
ORDER BY i.seq LIMIT $4;

-- name: items_changed_since
-- A job's item changes after `change_seq` $2, in order: an item row changes when the item
-- is submitted, retried or finishes, a lease row when it is dispatched.
SELECT * FROM (
    SELECT i.id, i.job_id, i.ref, i.status, i.attempts, i.output, i.error, i.usage, i.change_seq, i.seq,
           i.created_at, i.started_at, i.finished_at
    FROM items i WHERE i.job_id = $1 AND i.change_seq > $2
    UNION ALL
    SELECT i.id, i.job_id, i.ref, 'PROCESSING', l.attempt, NULL, i.error, NULL, l.change_seq, i.seq,
           i.created_at, coalesce(i.started_at, l.started_at), NULL
    FROM leases l JOIN items i ON i.id = l.item_id
    WHERE l.tenant_id = $3 AND l.job_id = $1 AND l.change_seq > $2
) changes ORDER BY change_seq LIMIT $4;

-- name: notify_job_changes
-- Watchers on other replicas: "<replica>|<job id>,<job id>,…".
SELECT pg_notify('fairway_jobs', $1);
