-- What happens to a leased item: heartbeat, completion, failure and retry, expiry, cancel.
-- Loaded once by `services/scheduler/sql.py`.
--
-- Every change to an item in flight matches its lease (item_id, lease): only the current
-- holder moves it, and only once, because the change deletes the lease row.
--
-- Lock order, in every transaction that moves items: tenants (by id), then queue_counts
-- (by lane, tenant), then job_cursors, then leases, then items, then jobs. Each lock_*
-- statement runs first in its transaction, so two transactions never wait on each other
-- in a cycle. A completion locks only its leases and items, and inserts
-- count_moves: it takes no counter lock. fold_count_moves locks queue_counts (by lane,
-- tenant) and then jobs, like the others. Claims take job cursors and retries SKIP LOCKED
-- and insert leases: they wait on no lease or item.

-- name: heartbeat
UPDATE leases l SET leased_until = now() + make_interval(secs => $3)
FROM unnest($1::uuid[], $2::bigint[]) AS h(id, lease)
WHERE l.item_id = ANY($1::uuid[]) AND l.item_id = h.id AND l.lease = h.lease
RETURNING l.item_id AS id;

-- name: canceled_items
SELECT id FROM items WHERE id = ANY($1::uuid[]) AND status = 'CANCELED';

-- name: record_upstream
UPDATE items SET upstream_id = $3
WHERE id = $1 AND EXISTS (SELECT 1 FROM leases WHERE item_id = $1 AND lease = $2)
RETURNING id;

-- name: complete_items
-- Fenced: only the current lease holder completes an item, once. The counts move through
-- count_moves: fold_count_moves adds them to the job and the (lane, tenant) counters and
-- finishes the job when this was its last unfinished item. Only two completions of the
-- same items (a retried request, on two replicas at once) can wait on each other; should
-- they deadlock, the loser runs again and finds the items completed.
WITH released AS (
    DELETE FROM leases l USING unnest($1::uuid[], $2::bigint[], $3::text[], $4::text[]) AS c(id, lease, output, usage)
    WHERE l.item_id = ANY($1::uuid[]) AND l.item_id = c.id AND l.lease = c.lease
    RETURNING l.item_id, l.attempt, l.started_at, c.output, c.usage
), done AS (
    UPDATE items i SET status = 'DONE', output = r.output, usage = r.usage, error = NULL, attempts = r.attempt,
        started_at = coalesce(i.started_at, r.started_at), finished_at = now(), change_seq = nextval('item_changes')
    FROM released r
    WHERE i.id = r.item_id
    RETURNING i.id, i.job_id, i.tenant_id, i.lane, i.cost
), moved AS (
    INSERT INTO count_moves (tenant_id, lane, job_id, n_done)
    SELECT tenant_id, lane, job_id, count(*) FROM done GROUP BY tenant_id, lane, job_id
), charged AS (
    INSERT INTO credit_ledger (tenant_id, kind, amount, job_id, item_id)
    SELECT tenant_id, 'charge', 0, job_id, id FROM done WHERE cost > 0
)
SELECT id, job_id, tenant_id, lane FROM done;

-- name: fold_count_moves
-- Completions into the counters, up to $1 moves at a time; several folders take disjoint
-- moves (SKIP LOCKED). A job whose items are then all finished is finished here: its
-- completions had committed, with their item rows, before their moves could be read.
-- One row: how many moves it folded, and the jobs it finished (NULL if none).
WITH moves AS (
    DELETE FROM count_moves WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM count_moves LIMIT $1 FOR UPDATE SKIP LOCKED))
    RETURNING tenant_id, lane, job_id, n_done
), locked AS (
    SELECT count(*) AS n FROM (
        SELECT 1 FROM queue_counts WHERE (lane, tenant_id) IN (SELECT lane, tenant_id FROM moves)
        ORDER BY lane, tenant_id FOR UPDATE
    ) l
), counted AS (
    UPDATE jobs j SET n_done = j.n_done + m.n, updated_at = now(),
        finished_at = coalesce(j.finished_at, CASE WHEN j.n_done + m.n + j.n_failed + j.n_canceled = j.items_total
                                                    THEN now() END)
    FROM (SELECT job_id, sum(n_done)::int AS n FROM moves GROUP BY job_id) m
    WHERE j.id = m.job_id AND (SELECT n FROM locked) >= 0
    RETURNING j.id, j.finished_at = now() AS finished  -- now(): this transaction's start
), counters AS (
    UPDATE queue_counts q SET unfinished = unfinished - m.n
    FROM (SELECT lane, tenant_id, sum(n_done) AS n FROM moves GROUP BY lane, tenant_id) m
    WHERE q.lane = m.lane AND q.tenant_id = m.tenant_id AND (SELECT n FROM locked) >= 0
)
SELECT (SELECT count(*) FROM moves) AS folded, array_agg(id) FILTER (WHERE finished) AS finished FROM counted;

-- name: fail_items
-- Fenced. A retryable failure with attempts left waits in `retries` for its backoff
-- (exponential with full jitter, never sooner than the upstream's retry-after); anything
-- else is FAILED and its credits are refunded. `counted` false: the attempt does not
-- count (the item never reached a predictor). $6 max attempts, $7 backoff base s, $8 cap s.
WITH f AS (
    SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::boolean[], $5::float8[], $9::boolean[])
        AS f(id, lease, error, retry, retry_after, counted)
), released AS (
    DELETE FROM leases l USING f
    WHERE l.item_id = ANY($1::uuid[]) AND l.item_id = f.id AND l.lease = f.lease
    RETURNING l.item_id, l.started_at, f.error, f.retry_after,
              CASE WHEN f.counted THEN l.attempt ELSE l.attempt - 1 END AS attempts,
              f.retry AND (CASE WHEN f.counted THEN l.attempt ELSE l.attempt - 1 END) < $6 AS again
), changed AS (
    UPDATE items i SET
        status = CASE WHEN r.again THEN 'PENDING' ELSE 'FAILED' END,
        attempts = r.attempts, error = r.error, started_at = coalesce(i.started_at, r.started_at),
        finished_at = CASE WHEN r.again THEN NULL ELSE now() END,
        change_seq = nextval('item_changes')
    FROM released r
    WHERE i.id = r.item_id
    RETURNING i.id, i.job_id, i.tenant_id, i.lane, i.priority, i.cost, i.status,
              CASE WHEN r.again THEN greatest(r.retry_after, random() * least(
                  $8::float8, $7::float8 * 2 ^ greatest(r.attempts - 1, 0))) ELSE 0 END AS delay_s
), requeued AS (
    INSERT INTO retries (item_id, job_id, lane, tenant_id, priority, run_after)
    SELECT id, job_id, lane, tenant_id, priority, now() + make_interval(secs => delay_s)
    FROM changed WHERE status = 'PENDING'
), counted AS (
    -- A retried item stays unfinished: only the failed ones change the counters (a retry
    -- still moves the job's updated_at).
    UPDATE jobs j SET n_failed = j.n_failed + c.failed, updated_at = now(),
        finished_at = coalesce(j.finished_at, CASE WHEN j.n_done + j.n_failed + c.failed + j.n_canceled = j.items_total
                                                    THEN now() END)
    FROM (SELECT job_id, count(*) FILTER (WHERE status = 'FAILED') AS failed FROM changed GROUP BY job_id) c
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
-- Leases whose holder went silent: hand them back (attempt counted) or fail them.
SELECT item_id AS id, lease FROM leases WHERE leased_until < now() ORDER BY leased_until LIMIT $1;

-- name: mark_job_canceled
UPDATE jobs SET canceled = true, updated_at = now()
WHERE id = $1 AND ($2 = '' OR tenant_id = $2) AND finished_at IS NULL
RETURNING id, tenant_id, lane;

-- name: close_job_cursor
-- Nothing more of the job is dispatched; waits for a claim that holds the cursor, so the
-- statement after this one sees what that claim leased.
DELETE FROM job_cursors WHERE job_id = $1;

-- name: cancel_items
-- A job's unfinished items (queued, waiting for a retry, or in flight: their leases end
-- here) become CANCELED and their credits are refunded; the job is finished. $2 tenant,
-- $3 lane of the job. (Marking the job is a statement of its own: one statement must not
-- update the same job row twice.)
WITH gone AS (
    DELETE FROM leases WHERE tenant_id = $2 AND job_id = $1 RETURNING item_id, attempt, started_at
), old AS (
    SELECT i.id, g.attempt, g.started_at, g.item_id IS NOT NULL AS leased
    FROM items i LEFT JOIN gone g ON g.item_id = i.id
    WHERE i.job_id = $1 AND i.status = 'PENDING'
), changed AS (
    UPDATE items i SET status = 'CANCELED', finished_at = now(), attempts = coalesce(o.attempt, i.attempts),
        started_at = coalesce(i.started_at, o.started_at), change_seq = nextval('item_changes')
    FROM old o WHERE i.id = o.id
    RETURNING i.id, i.job_id, i.tenant_id, i.lane, i.cost, i.upstream_id,
              CASE WHEN o.leased THEN 'PROCESSING' ELSE 'PENDING' END AS was
), unqueued AS (
    DELETE FROM retries WHERE lane = $3 AND tenant_id = $2 AND item_id IN (SELECT id FROM changed)
), counted AS (
    UPDATE jobs x SET n_canceled = x.n_canceled + c.n,
        finished_at = coalesce(x.finished_at, CASE WHEN x.n_done + x.n_failed + x.n_canceled + c.n = x.items_total
                                                    THEN now() END)
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

-- name: item_by_upstream
SELECT i.id, l.lease FROM items i LEFT JOIN leases l ON l.item_id = i.id WHERE i.upstream_id = $1;

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
