-- Every query the scheduler runs, by name. Loaded once by `services/scheduler/sql.py`.

-- name: create_tenant
INSERT INTO tenants (id, key_hash, weight, max_concurrency, max_queued, credits)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (id) DO NOTHING
RETURNING id, weight, max_concurrency, max_queued, credits;

-- name: ledger_grant
INSERT INTO credit_ledger (tenant_id, kind, amount) VALUES ($1, 'grant', $2);

-- name: tenant_by_key
SELECT id FROM tenants WHERE key_hash = $1;

-- name: get_tenant
SELECT t.id, t.weight, t.max_concurrency, t.max_queued, t.credits,
       (u.n - f.n)::bigint AS queued, f.n::bigint AS processing
FROM tenants t
CROSS JOIN LATERAL (SELECT coalesce(sum(unfinished), 0) AS n FROM queue_counts q WHERE q.tenant_id = t.id) u
CROSS JOIN LATERAL (SELECT count(*) AS n FROM items i WHERE i.tenant_id = t.id AND i.lease IS NOT NULL) f
WHERE t.id = $1;

-- name: update_tenant
UPDATE tenants SET
    weight = coalesce($2, weight),
    max_concurrency = CASE WHEN $3::boolean THEN NULL ELSE coalesce($4, max_concurrency) END,
    max_queued = coalesce($5, max_queued)
WHERE id = $1
RETURNING id, weight, max_concurrency, max_queued, credits;

-- name: add_credits
UPDATE tenants SET credits = coalesce(credits, 0) + $2 WHERE id = $1 RETURNING credits;

-- name: all_tenants
SELECT id, weight, max_concurrency FROM tenants;

-- name: lock_tenant
SELECT id, max_queued, credits,
       (coalesce((SELECT sum(unfinished) FROM queue_counts q WHERE q.tenant_id = t.id), 0)
        - (SELECT count(*) FROM items i WHERE i.tenant_id = t.id AND i.lease IS NOT NULL))::bigint AS queued
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
VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9, $10, $11);

-- name: insert_items
INSERT INTO items (id, job_id, tenant_id, lane, priority, seq, ref, input, est_tokens, cost)
SELECT gen_random_uuid(), $1, $2, $3, $4, u.seq, u.ref, u.input, u.est, $5
FROM unnest($6::text[], $7::text[], $8::int[]) WITH ORDINALITY AS u(ref, input, est, seq);

-- name: count_submitted
-- Last statement of a submit, so that the counter row is locked only for a moment.
INSERT INTO queue_counts (lane, tenant_id, unfinished) VALUES ($1, $2, $3)
ON CONFLICT (lane, tenant_id) DO UPDATE SET unfinished = queue_counts.unfinished + excluded.unfinished;

-- name: notify_backlog
SELECT pg_notify('fairway_backlog', $1);

-- name: get_job
-- Queued and in-flight counts are derived: the job row changes only when items finish.
SELECT j.id, j.tenant_id, j.provider, j.model, j.operation, j.priority, j.metadata::text AS metadata,
       j.items_total, j.items_total - j.n_done - j.n_failed - j.n_canceled - f.n AS n_pending,
       f.n AS n_processing, j.n_done, j.n_failed, j.n_canceled, j.canceled,
       j.created_at, j.updated_at, j.finished_at
FROM jobs j
CROSS JOIN LATERAL (SELECT count(*) AS n FROM items i
                    WHERE i.tenant_id = j.tenant_id AND i.job_id = j.id AND i.lease IS NOT NULL) f
WHERE j.id = $1 AND ($2 = '' OR j.tenant_id = $2);

-- name: list_jobs
-- A job is PENDING while none of its items has started: none finished and none in flight.
SELECT j.id, j.tenant_id, j.provider, j.model, j.operation, j.priority, j.metadata::text AS metadata,
       j.items_total, j.items_total - j.n_done - j.n_failed - j.n_canceled - f.n AS n_pending,
       f.n AS n_processing, j.n_done, j.n_failed, j.n_canceled, j.canceled,
       j.created_at, j.updated_at, j.finished_at, j.seq
FROM jobs j
CROSS JOIN LATERAL (SELECT count(*) AS n FROM items i
                    WHERE i.tenant_id = j.tenant_id AND i.job_id = j.id AND i.lease IS NOT NULL) f
WHERE ($1 = '' OR j.tenant_id = $1) AND j.seq < $2
  AND ($3 = '' OR CASE $3
        WHEN 'PENDING' THEN j.finished_at IS NULL AND j.n_done + j.n_failed + j.n_canceled + f.n = 0
        WHEN 'PROCESSING' THEN j.finished_at IS NULL AND j.n_done + j.n_failed + j.n_canceled + f.n > 0
        WHEN 'DONE' THEN j.finished_at IS NOT NULL AND NOT j.canceled AND j.n_failed = 0
        WHEN 'FAILED' THEN j.finished_at IS NOT NULL AND NOT j.canceled AND j.n_failed > 0
        WHEN 'CANCELED' THEN j.canceled END)
ORDER BY j.seq DESC LIMIT $4;

-- name: list_items
SELECT id, job_id, ref, status, attempts, output, error, usage, change_seq, seq,
       created_at, started_at, finished_at
FROM items
WHERE job_id = $1 AND seq > $2 AND ($3 = '' OR status = $3)
ORDER BY seq LIMIT $4;

-- name: items_changed_since
SELECT id, job_id, ref, status, attempts, output, error, usage, change_seq, seq,
       created_at, started_at, finished_at
FROM items WHERE job_id = $1 AND change_seq > $2
ORDER BY change_seq LIMIT $3;

-- name: queue_counts
-- The dispatch index's resync: one row per (lane, tenant) with anything queued or in flight.
-- Queued = unfinished - in flight; both read in one snapshot, so they agree.
SELECT q.lane, q.tenant_id, q.unfinished - coalesce(f.n, 0) AS pending, coalesce(f.n, 0) AS processing
FROM queue_counts q LEFT JOIN (
    SELECT lane, tenant_id, count(*) AS n FROM items WHERE lease IS NOT NULL GROUP BY lane, tenant_id
) f USING (lane, tenant_id)
WHERE q.unfinished > 0;

-- name: claim_items
-- Take up to n[i] ready items of tenant[i] in one lane: one index range scan per tenant.
-- A tenant with max_concurrency gets at most its cap minus what it has in flight in all
-- lanes, counted after `lock_counts_for_claim` took its counter rows, so that replicas
-- cannot overshoot it. No counter changes here: a claim only moves items from queued to
-- in flight, and both are derived from the items (see 0003_unfinished_counts.sql).
-- One row per claimed item, plus a row with a NULL id for each tenant that got none;
-- `room` is what the cap allowed, so the caller tells "capped" from "ran out of items".
-- $6 says whether the caller holds those locks; if not, a tenant with max_concurrency gets
-- nothing and is marked `deferred`, for the caller to claim for it again, locked. Most
-- tenants have no cap, and their claim is then this one statement, without a transaction.
WITH wanted AS (
    SELECT w.tenant_id, w.n, t.max_concurrency AS cap
    FROM unnest($2::text[], $3::int[]) AS w(tenant_id, n) LEFT JOIN tenants t ON t.id = w.tenant_id
), busy AS (
    SELECT i.tenant_id, count(*) AS n FROM items i
    WHERE $6 AND i.lease IS NOT NULL
      AND i.tenant_id = ANY(ARRAY(SELECT tenant_id FROM wanted WHERE cap IS NOT NULL))
    GROUP BY i.tenant_id
), room AS (
    SELECT w.tenant_id, CASE WHEN w.cap IS NULL THEN w.n
                             WHEN NOT $6 THEN 0
                             ELSE least(w.n, greatest(0, w.cap - coalesce(b.n, 0))) END AS n,
           w.cap IS NOT NULL AND NOT $6 AS deferred
    FROM wanted w LEFT JOIN busy b ON b.tenant_id = w.tenant_id
), picked AS (
    SELECT c.id FROM room w CROSS JOIN LATERAL (
        SELECT id FROM items
        WHERE lane = $1 AND tenant_id = w.tenant_id AND status = 'PENDING' AND run_after <= now()
        ORDER BY priority DESC, run_after, seq
        LIMIT w.n FOR UPDATE SKIP LOCKED
    ) c
), claimed AS (
    UPDATE items i SET status = 'PROCESSING', lease = nextval('leases'), worker = $4,
        attempts = attempts + 1, leased_until = now() + make_interval(secs => $5),
        started_at = coalesce(started_at, now()), change_seq = nextval('item_changes')
    -- An array, not a join: the planner cannot know LIMIT w.n and would scan all items.
    WHERE i.id = ANY(ARRAY(SELECT id FROM picked))
    RETURNING i.id, i.job_id, i.tenant_id, i.lease, i.attempts, i.input, i.upstream_id, i.leased_until
)
SELECT r.tenant_id AS room_tenant, r.n AS room, r.deferred, c.id, c.job_id, c.tenant_id, c.lease, c.attempts, c.input,
       c.upstream_id, c.leased_until, j.provider, j.model, j.operation
FROM room r LEFT JOIN claimed c ON c.tenant_id = r.tenant_id LEFT JOIN jobs j ON j.id = c.job_id;

-- name: heartbeat
UPDATE items i SET leased_until = now() + make_interval(secs => $3)
FROM unnest($1::uuid[], $2::bigint[]) AS h(id, lease)
WHERE i.id = h.id AND i.lease = h.lease AND i.status = 'PROCESSING'
RETURNING i.id;

-- name: canceled_items
SELECT id FROM items WHERE id = ANY($1::uuid[]) AND status = 'CANCELED';

-- name: record_upstream
UPDATE items SET upstream_id = $3 WHERE id = $1 AND lease = $2 AND status = 'PROCESSING'
RETURNING id;

-- name: complete_items
-- Fenced: only the current lease holder of a PROCESSING item completes it, once.
-- It takes its own counter-row locks first, in the global lock order: `locked` is an
-- InitPlan of `done`, so it runs before any item row is locked, and the statement needs no
-- transaction of its own.
WITH locked AS (
    SELECT count(*) AS n FROM (
        SELECT 1 FROM queue_counts
        WHERE (lane, tenant_id) IN (SELECT lane, tenant_id FROM items WHERE id = ANY($1::uuid[]))
        ORDER BY lane, tenant_id FOR UPDATE
    ) l
), done AS (
    UPDATE items i SET status = 'DONE', output = c.output, usage = c.usage, error = NULL,
        finished_at = now(), lease = NULL, leased_until = NULL, change_seq = nextval('item_changes')
    FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::text[]) AS c(id, lease, output, usage)
    WHERE i.id = c.id AND i.lease = c.lease AND i.status = 'PROCESSING' AND (SELECT n FROM locked) >= 0
    RETURNING i.id, i.job_id, i.tenant_id, i.lane, i.cost
), counted AS (
    UPDATE jobs j SET n_done = n_done + d.n, updated_at = now()
    FROM (SELECT job_id, count(*) AS n FROM done GROUP BY job_id) d WHERE j.id = d.job_id
), moved AS (
    UPDATE queue_counts q SET unfinished = unfinished - d.n
    FROM (SELECT lane, tenant_id, count(*) AS n FROM done GROUP BY lane, tenant_id) d
    WHERE q.lane = d.lane AND q.tenant_id = d.tenant_id
), charged AS (
    INSERT INTO credit_ledger (tenant_id, kind, amount, job_id, item_id)
    SELECT tenant_id, 'charge', 0, job_id, id FROM done WHERE cost > 0
)
SELECT id, job_id, tenant_id, lane FROM done;

-- name: fail_items
-- Fenced. A retryable failure with attempts left goes back to PENDING after exponential
-- backoff with full jitter (never sooner than the upstream's retry-after); anything else
-- is FAILED and its credits are refunded. $6 max attempts, $7 backoff base s, $8 backoff cap s.
WITH f AS (
    SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::boolean[], $5::float8[])
        AS f(id, lease, error, retry, retry_after)
), changed AS (
    UPDATE items i SET
        status = CASE WHEN f.retry AND i.attempts < $6 THEN 'PENDING' ELSE 'FAILED' END,
        error = f.error,
        run_after = now() + make_interval(secs => greatest(
            f.retry_after, random() * least($8::float8, $7::float8 * 2 ^ greatest(i.attempts - 1, 0)))),
        finished_at = CASE WHEN f.retry AND i.attempts < $6 THEN NULL ELSE now() END,
        lease = NULL, leased_until = NULL, worker = NULL, change_seq = nextval('item_changes')
    FROM f WHERE i.id = f.id AND i.lease = f.lease AND i.status = 'PROCESSING'
    RETURNING i.id, i.job_id, i.tenant_id, i.lane, i.cost, i.status,
              extract(epoch FROM i.run_after - now())::float8 AS delay_s
), counted AS (
    -- A retried item stays unfinished: only the failed ones change the counters.
    UPDATE jobs j SET n_failed = n_failed + c.failed, updated_at = now()
    FROM (SELECT job_id, count(*) AS failed FROM changed WHERE status = 'FAILED' GROUP BY job_id) c
    WHERE j.id = c.job_id
), moved AS (
    UPDATE queue_counts q SET unfinished = unfinished - c.failed
    FROM (SELECT lane, tenant_id, count(*) AS failed FROM changed WHERE status = 'FAILED'
          GROUP BY lane, tenant_id) c
    WHERE q.lane = c.lane AND q.tenant_id = c.tenant_id
), refunded AS (
    UPDATE tenants t SET credits = credits + r.amount
    FROM (SELECT tenant_id, sum(cost) AS amount FROM changed WHERE status = 'FAILED' AND cost > 0
          GROUP BY tenant_id) r
    WHERE t.id = r.tenant_id
), ledger AS (
    INSERT INTO credit_ledger (tenant_id, kind, amount, job_id, item_id)
    SELECT tenant_id, 'refund', cost, job_id, id FROM changed WHERE status = 'FAILED' AND cost > 0
)
SELECT id, job_id, tenant_id, lane, status, delay_s FROM changed;

-- name: expired_leases
-- Leases whose holder went silent: hand them back (attempt already counted) or fail them.
SELECT id, lease FROM items WHERE lease IS NOT NULL AND leased_until < now() AND status = 'PROCESSING'
ORDER BY leased_until LIMIT $1;

-- name: mark_job_canceled
UPDATE jobs SET canceled = true, updated_at = now()
WHERE id = $1 AND ($2 = '' OR tenant_id = $2) AND finished_at IS NULL
RETURNING id;

-- name: cancel_items
-- A job's unfinished items become CANCELED and their credits are refunded. (Marking the
-- job is a statement of its own: one statement must not update the same job row twice.)
WITH old AS (
    SELECT id, status FROM items WHERE job_id = $1 AND status IN ('PENDING', 'PROCESSING') FOR UPDATE
), changed AS (
    UPDATE items i SET status = 'CANCELED', finished_at = now(), lease = NULL, leased_until = NULL,
        change_seq = nextval('item_changes')
    FROM old WHERE i.id = old.id
    RETURNING i.id, i.job_id, i.tenant_id, i.lane, i.cost, i.upstream_id, old.status AS was
), counted AS (
    UPDATE jobs x SET n_canceled = n_canceled + c.n
    FROM (SELECT job_id, count(*) AS n FROM changed GROUP BY job_id) c
    WHERE x.id = c.job_id
), moved AS (
    UPDATE queue_counts q SET unfinished = unfinished - c.n
    FROM (SELECT lane, tenant_id, count(*) AS n FROM changed GROUP BY lane, tenant_id) c
    WHERE q.lane = c.lane AND q.tenant_id = c.tenant_id
), refunded AS (
    UPDATE tenants t SET credits = credits + r.amount
    FROM (SELECT tenant_id, sum(cost) AS amount FROM changed WHERE cost > 0 GROUP BY tenant_id) r
    WHERE t.id = r.tenant_id
), ledger AS (
    INSERT INTO credit_ledger (tenant_id, kind, amount, job_id, item_id)
    SELECT tenant_id, 'refund', cost, job_id, id FROM changed WHERE cost > 0
)
SELECT id, lane, tenant_id, was, upstream_id FROM changed;

-- name: finish_jobs
UPDATE jobs SET finished_at = now(), updated_at = now()
WHERE id = ANY($1::uuid[]) AND finished_at IS NULL AND n_done + n_failed + n_canceled = items_total
RETURNING id;

-- name: item_by_upstream
SELECT id, lease, status FROM items WHERE upstream_id = $1;

-- name: queue_by_tenant
-- From the counters and the items in flight, plus one index probe per tenant for its oldest
-- queued item.
SELECT q.tenant_id, (q.unfinished - coalesce(f.n, 0))::bigint AS queued, coalesce(f.n, 0)::bigint AS processing,
       coalesce(extract(epoch FROM now() - (
           SELECT min(created_at) FROM items i WHERE i.tenant_id = q.tenant_id AND i.status = 'PENDING'
       )), 0)::float8 AS oldest_age
FROM (SELECT tenant_id, sum(unfinished) AS unfinished FROM queue_counts
      GROUP BY tenant_id HAVING sum(unfinished) > 0) q
LEFT JOIN (SELECT tenant_id, count(*) AS n FROM items WHERE lease IS NOT NULL GROUP BY tenant_id) f
    USING (tenant_id);

-- name: queue_by_lane
SELECT q.lane, (sum(q.unfinished) - coalesce(max(f.n), 0))::bigint AS queued,
       coalesce(max(f.n), 0)::bigint AS processing, count(*)::bigint AS tenants
FROM queue_counts q
LEFT JOIN (SELECT lane, count(*) AS n FROM items WHERE lease IS NOT NULL GROUP BY lane) f USING (lane)
WHERE q.unfinished > 0 GROUP BY q.lane;

-- name: lane_token_estimate
-- Mean token estimate of a lane's next items (a sample from the dispatch index).
SELECT avg(est_tokens)::float8 FROM (
    SELECT est_tokens FROM items WHERE lane = $1 AND status = 'PENDING' LIMIT 1000
) s;

-- name: tenant_policy
SELECT id, weight, max_concurrency FROM tenants WHERE id = $1;

-- name: notify_tenant
SELECT pg_notify('fairway_tenants', $1);

-- Lock order, in every transaction that moves items: tenants (by id), then queue_counts
-- (by lane, tenant), then items, then jobs. Each lock_* statement runs first in its
-- transaction, so two transactions never wait on each other in a cycle.

-- name: lock_counts_for_claim
-- Only tenants with max_concurrency: their claims take turns, so that each counts what the
-- previous one put in flight. Claims of other tenants lock no counter row at all.
SELECT 1 FROM queue_counts q JOIN tenants t ON t.id = q.tenant_id
WHERE q.tenant_id = ANY($1::text[]) AND t.max_concurrency IS NOT NULL
ORDER BY q.lane, q.tenant_id FOR UPDATE OF q;

-- name: lock_tenants_of_items
SELECT 1 FROM tenants WHERE id IN (SELECT tenant_id FROM items WHERE id = ANY($1::uuid[]))
ORDER BY id FOR UPDATE;

-- name: lock_counts_of_items
SELECT 1 FROM queue_counts WHERE (lane, tenant_id) IN (SELECT lane, tenant_id FROM items WHERE id = ANY($1::uuid[]))
ORDER BY lane, tenant_id FOR UPDATE;

-- name: lock_tenant_of_job
SELECT 1 FROM tenants WHERE id = (SELECT tenant_id FROM jobs WHERE id = $1) FOR UPDATE;

-- name: lock_counts_of_job
SELECT 1 FROM queue_counts WHERE (lane, tenant_id) = (SELECT lane, tenant_id FROM jobs WHERE id = $1) FOR UPDATE;
