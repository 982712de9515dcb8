-- Dispatch: the index's resync and the claim. Loaded once by `services/scheduler/sql.py`.

-- name: queue_counts
-- The dispatch index's resync: one row per (lane, tenant) with anything queued or in flight.
-- Queued = unfinished - in flight; both read in one snapshot, so they agree.
SELECT q.lane, q.tenant_id, q.unfinished - coalesce(f.n, 0) AS pending, coalesce(f.n, 0) AS processing
FROM queue_unfinished q LEFT JOIN (
    SELECT lane, tenant_id, count(*) AS n FROM leases GROUP BY lane, tenant_id
) f USING (lane, tenant_id)
WHERE q.unfinished > 0;

-- name: lock_counts_for_claim
-- Only tenants with max_concurrency: their claims take turns, so that each counts what the
-- previous one put in flight. Claims of other tenants lock no counter row at all.
SELECT 1 FROM queue_counts q JOIN tenants t ON t.id = q.tenant_id
WHERE q.tenant_id = ANY($1::text[]) AND t.max_concurrency IS NOT NULL
ORDER BY q.lane, q.tenant_id FOR UPDATE OF q;

-- name: claim_items
-- Lease up to n[i] items of tenant[i] in lane $1 to worker $4 for $5 seconds, in the
-- tenant's order: priority first; at equal priority the items waiting for another attempt
-- (whose backoff is over), then the jobs in submit order, each job's items in order.
--
-- No item row is written. A job hands out a range of its items by advancing the cursor of
-- one of its stripes; the items' rows are only read (by (job_id, seq)), and each leased
-- item gets a row in `leases`. Cursors and retries are taken SKIP LOCKED: a claim never
-- waits for another, it serves the stripes no other claim holds (`job_stripes_left` tells
-- a tenant whose stripes were all held elsewhere from one that ran out of items).
--
-- max_concurrency: with $6 false, a tenant with a cap gets nothing and comes back
-- `deferred`, for the caller to claim again after `lock_counts_for_claim`, with $6 true;
-- then the room is its cap minus its leases in every lane, counted after that lock.
-- One row per picked tenant (`id` NULL) with `room`, what its cap allowed, so the caller
-- tells "capped" from "ran out of items"; then one row per leased item.
WITH wanted AS (
    SELECT w.tenant_id, w.n, t.max_concurrency AS cap
    FROM unnest($2::text[], $3::int[]) AS w(tenant_id, n) JOIN tenants t ON t.id = w.tenant_id
), busy AS (
    SELECT l.tenant_id, count(*) AS n FROM leases l
    WHERE $6 AND l.tenant_id = ANY(ARRAY(SELECT tenant_id FROM wanted WHERE cap IS NOT NULL))
    GROUP BY l.tenant_id
), room AS (
    SELECT w.tenant_id, CASE WHEN w.cap IS NULL THEN w.n
                             WHEN NOT $6 THEN 0
                             ELSE least(w.n, greatest(0, w.cap - coalesce(b.n, 0))) END AS n,
           w.cap IS NOT NULL AND NOT $6 AS deferred
    FROM wanted w LEFT JOIN busy b ON b.tenant_id = w.tenant_id
    ORDER BY w.tenant_id
), candidates AS (
    SELECT r.tenant_id, r.n, p.priority, 0 AS kind, p.run_after, 0::bigint AS job_seq, 0::smallint AS stripe,
           p.item_id, NULL::uuid AS job_id, 0 AS dispatched, 0 AS last_seq, 1 AS size,
           NULL::text AS provider, NULL::text AS model, NULL::text AS operation
    FROM room r CROSS JOIN LATERAL (
        SELECT item_id, priority, run_after FROM retries
        WHERE lane = $1 AND tenant_id = r.tenant_id AND run_after <= now()
        ORDER BY priority DESC, run_after LIMIT r.n FOR UPDATE SKIP LOCKED
    ) p
    WHERE r.n > 0 AND EXISTS (SELECT 1 FROM retries WHERE lane = $1 AND run_after <= now())
    UNION ALL
    SELECT r.tenant_id, r.n, c.priority, 1, NULL, c.job_seq, c.stripe, NULL, c.job_id, c.dispatched, c.last_seq,
           c.last_seq - c.dispatched, c.provider, c.model, c.operation
    FROM room r CROSS JOIN LATERAL (
        -- The tenant's first stripe that no other claim holds; more only if it holds fewer
        -- items than wanted (a tenant's big job needs one, its small jobs one each).
        SELECT job_id, stripe, priority, job_seq, dispatched, last_seq, provider, model, operation FROM job_cursors
        WHERE r.n > 0 AND lane = $1 AND tenant_id = r.tenant_id
        ORDER BY priority DESC, job_seq, stripe LIMIT 1 FOR UPDATE SKIP LOCKED
    ) f CROSS JOIN LATERAL (
        SELECT f.job_id, f.stripe, f.priority, f.job_seq, f.dispatched, f.last_seq, f.provider, f.model, f.operation
        UNION ALL
        SELECT * FROM (
            SELECT job_id, stripe, priority, job_seq, dispatched, last_seq, provider, model, operation
            FROM job_cursors
            WHERE f.last_seq - f.dispatched < r.n AND lane = $1 AND tenant_id = r.tenant_id
              AND (job_id, stripe) <> (f.job_id, f.stripe)
            ORDER BY priority DESC, job_seq, stripe LIMIT r.n - 1 FOR UPDATE SKIP LOCKED
        ) more
    ) c
    WHERE r.n > 0
), taken AS (
    -- Each candidate takes what is still wanted after the ones before it.
    SELECT * FROM (
        SELECT c.*, least(c.size, greatest(0, c.n - (sum(c.size) OVER (
            PARTITION BY c.tenant_id ORDER BY c.priority DESC, c.kind, c.run_after, c.job_seq, c.stripe
            ROWS UNBOUNDED PRECEDING) - c.size)))::int AS take
        FROM candidates c
    ) s WHERE take > 0
), advanced AS (
    -- From arrays, so that each stripe is one primary-key probe (a join with `taken` can be
    -- planned as a loop over all of it for each row).
    UPDATE job_cursors c SET dispatched = c.dispatched + u.take
    FROM unnest(ARRAY(SELECT job_id FROM taken WHERE kind = 1 AND take < size),
                ARRAY(SELECT stripe FROM taken WHERE kind = 1 AND take < size),
                ARRAY(SELECT take FROM taken WHERE kind = 1 AND take < size)) AS u(job_id, stripe, take)
    WHERE c.job_id = u.job_id AND c.stripe = u.stripe
), exhausted AS (
    DELETE FROM job_cursors c
    USING unnest(ARRAY(SELECT job_id FROM taken WHERE kind = 1 AND take = size),
                 ARRAY(SELECT stripe FROM taken WHERE kind = 1 AND take = size)) AS u(job_id, stripe)
    WHERE c.job_id = u.job_id AND c.stripe = u.stripe
), unqueued AS (
    DELETE FROM retries WHERE item_id = ANY(ARRAY(SELECT item_id FROM taken WHERE kind = 0))
), items_taken AS (
    -- A retried item of a canceled job (one with a recorded upstream call) goes out to be
    -- canceled upstream; a job's cursor is gone once it is canceled.
    SELECT i.id, i.job_id, i.tenant_id, i.attempts, i.input, i.upstream_id, i.est_tokens, j.provider, j.model, j.operation,
           j.canceled
    FROM items i JOIN jobs j ON j.id = i.job_id
    WHERE i.id = ANY(ARRAY(SELECT item_id FROM taken WHERE kind = 0)) AND i.status = 'PENDING'
    UNION ALL
    SELECT i.id, i.job_id, i.tenant_id, i.attempts, i.input, i.upstream_id, i.est_tokens, t.provider, t.model, t.operation,
           false
    FROM taken t CROSS JOIN LATERAL (
        SELECT id, job_id, tenant_id, attempts, input, upstream_id, est_tokens FROM items
        WHERE job_id = t.job_id AND seq > t.dispatched AND seq <= t.last_seq AND status = 'PENDING'
        ORDER BY seq LIMIT t.take
    ) i
    WHERE t.kind = 1
), chosen AS (
    SELECT *, nextval('lease_numbers') AS lease, attempts + 1 AS attempt,
           now() + make_interval(secs => $5) AS leased_until
    FROM items_taken
), leased AS (
    INSERT INTO leases (item_id, lease, job_id, tenant_id, lane, worker, attempt, leased_until)
    SELECT id, lease, job_id, tenant_id, $1, $4, attempt, leased_until FROM chosen
)
SELECT r.tenant_id AS room_tenant, r.n AS room, r.deferred, NULL::uuid AS id, NULL::uuid AS job_id,
       NULL::text AS tenant_id, NULL::bigint AS lease, NULL::int AS attempts, NULL::text AS input,
       NULL::text AS upstream_id, NULL::int AS est_tokens, NULL::timestamptz AS leased_until, NULL::text AS provider,
       NULL::text AS model, NULL::text AS operation, NULL::boolean AS canceled
FROM room r
UNION ALL
SELECT NULL, NULL, NULL, c.id, c.job_id, c.tenant_id, c.lease, c.attempt, c.input, c.upstream_id, c.est_tokens,
       c.leased_until,
       c.provider, c.model, c.operation, c.canceled
FROM chosen c;

-- name: job_stripes_left
-- Which of these tenants still have items to dispatch in lane $1 (after a claim that came
-- back short for them: another claim may have held their stripes).
SELECT t.tenant_id FROM unnest($2::text[]) AS t(tenant_id)
WHERE EXISTS (SELECT 1 FROM job_cursors c WHERE c.lane = $1 AND c.tenant_id = t.tenant_id);

-- name: lane_token_bound
-- The largest token count among a lane's next items (the open stripes' next items, sampled):
-- what a dispatch round reserves per grant before it knows which items it claims.
SELECT max(i.est_tokens) FROM (
    SELECT job_id, dispatched FROM job_cursors WHERE lane = $1 LIMIT 200
) c CROSS JOIN LATERAL (
    SELECT est_tokens FROM items WHERE job_id = c.job_id AND seq > c.dispatched ORDER BY seq LIMIT 32
) i;
