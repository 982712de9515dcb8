-- What happens to a leased item: heartbeat, completion, failure and retry, expiry, cancel.
-- Loaded once by `services/scheduler/sql.py`.
--
-- Every change to an item in flight matches its lease (item_id, lease): only the current
-- holder moves it, and only once, because the change deletes the lease row.
--
-- Lock order, in every transaction that moves items: tenants (by id), then queue_counts
-- (by lane, tenant), then job_cursors, then retries (only a cancel locks them), then leases,
-- then items, then jobs. Each lock_*
-- statement runs first in its transaction, so two transactions never wait on each other
-- in a cycle. A completion locks only its leases and items, and inserts
-- count_moves: it takes no counter lock. fold_count_moves locks queue_counts (by lane,
-- tenant) and then jobs, like the others. Claims take job cursors and retries SKIP LOCKED
-- and insert leases: they wait on no lease or item.

-- name: heartbeat
-- The leases still held, and whether each one's job was canceled (its holder cancels the
-- upstream call and reports how it ended).
UPDATE leases l SET leased_until = now() + make_interval(secs => $3)
FROM unnest($1::uuid[], $2::bigint[]) AS h(id, lease)
WHERE l.item_id = ANY($1::uuid[]) AND l.item_id = h.id AND l.lease = h.lease
RETURNING l.item_id AS id, l.lease, (SELECT j.canceled FROM jobs j WHERE j.id = l.job_id) AS canceled;

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
--
-- An item of a canceled job is never dispatched again as work. Reported `canceled` ($10:
-- the provider canceled its call, or it never reached the provider), it is CANCELED. A
-- retryable end (a lost lease, a hand-back, a transient error) makes it CANCELED too when
-- no upstream call was ever recorded for it; when one was (the provider may be running it),
-- it waits in `retries` with no backoff, and its next holder cancels that call and reports
-- how it ended. Either way a CANCELED item is refunded, like a FAILED one.
WITH f AS (
    SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::boolean[], $5::float8[], $9::boolean[],
                         $10::boolean[])
        AS f(id, lease, error, retry, retry_after, counted, canceled)
), released AS (
    DELETE FROM leases l USING f
    WHERE l.item_id = ANY($1::uuid[]) AND l.item_id = f.id AND l.lease = f.lease
    RETURNING l.item_id, l.job_id, l.started_at, f.error, f.retry_after, f.retry, f.canceled,
              CASE WHEN f.counted THEN l.attempt ELSE l.attempt - 1 END AS attempts
), judged AS (
    SELECT r.*, j.canceled AS job_canceled,
           CASE WHEN j.canceled AND r.canceled THEN 'CANCELED'
                WHEN r.retry AND r.attempts < $6 AND (NOT j.canceled OR i.upstream_id IS NOT NULL) THEN 'PENDING'
                WHEN j.canceled AND r.retry THEN 'CANCELED'
                ELSE 'FAILED' END AS next
    FROM released r JOIN jobs j ON j.id = r.job_id JOIN items i ON i.id = r.item_id
), changed AS (
    UPDATE items i SET
        status = g.next, attempts = g.attempts, error = g.error, started_at = coalesce(i.started_at, g.started_at),
        finished_at = CASE WHEN g.next = 'PENDING' THEN NULL ELSE now() END,
        change_seq = nextval('item_changes')
    FROM judged g
    WHERE i.id = g.item_id
    RETURNING i.id, i.job_id, i.tenant_id, i.lane, i.priority, i.cost, i.status,
              CASE WHEN g.next <> 'PENDING' OR g.job_canceled THEN 0
                   ELSE greatest(g.retry_after, random() * least(
                  $8::float8, $7::float8 * 2 ^ greatest(g.attempts - 1, 0))) END AS delay_s
), requeued AS (
    INSERT INTO retries (item_id, job_id, lane, tenant_id, priority, run_after)
    SELECT id, job_id, lane, tenant_id, priority, now() + make_interval(secs => delay_s)
    FROM changed WHERE status = 'PENDING'
), counted AS (
    -- A retried item stays unfinished: only the failed and canceled ones change the counters
    -- (a retry still moves the job's updated_at).
    UPDATE jobs j SET n_failed = j.n_failed + c.failed, n_canceled = j.n_canceled + c.canceled, updated_at = now(),
        finished_at = coalesce(j.finished_at, CASE WHEN j.n_done + j.n_failed + c.failed + j.n_canceled + c.canceled
                                                        = j.items_total THEN now() END)
    FROM (SELECT job_id, count(*) FILTER (WHERE status = 'FAILED') AS failed,
                 count(*) FILTER (WHERE status = 'CANCELED') AS canceled FROM changed GROUP BY job_id) c
    WHERE j.id = c.job_id
), moved AS (
    UPDATE queue_counts q SET unfinished = unfinished - c.ended
    FROM (SELECT lane, tenant_id, count(*) AS ended FROM changed WHERE status <> 'PENDING'
          GROUP BY lane, tenant_id) c
    WHERE q.lane = c.lane AND q.tenant_id = c.tenant_id
), refunded AS (
    UPDATE tenants t SET credits = credits + r.amount
    FROM (SELECT tenant_id, sum(cost) AS amount FROM changed WHERE status <> 'PENDING' AND cost > 0
          GROUP BY tenant_id) r
    WHERE t.id = r.tenant_id
), ledger AS (
    INSERT INTO credit_ledger (tenant_id, kind, amount, job_id, item_id)
    SELECT tenant_id, 'refund', cost, job_id, id FROM changed WHERE status <> 'PENDING' AND cost > 0
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

-- name: lock_job_retries
-- The job's items waiting for another attempt: waits for a claim that holds one (it takes
-- them SKIP LOCKED), so the statements after this one see what that claim leased, and keeps
-- the rest from claims until the cancel commits (a claim after it sees the job canceled).
SELECT 1 FROM retries WHERE job_id = $1 FOR UPDATE;

-- name: cancel_items
-- The job's unfinished items that never reached the provider (queued, or waiting for a
-- retry with no upstream call recorded) become CANCELED and their credits are refunded; the
-- job is finished if nothing else is left. $2 tenant, $3 lane of the job. Items in flight
-- keep their leases until their holders report how the upstream call ended (`fail_items`,
-- `complete_items`), and an item waiting for a retry with a recorded upstream call is
-- dispatched once more, for its next holder to cancel that call. (Marking the job is a
-- statement of its own: one statement must not update the same job row twice.)
WITH changed AS (
    UPDATE items i SET status = 'CANCELED', finished_at = now(), change_seq = nextval('item_changes')
    WHERE i.job_id = $1 AND i.status = 'PENDING' AND i.upstream_id IS NULL
      AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.item_id = i.id)
    RETURNING i.id, i.job_id, i.tenant_id, i.lane, i.cost
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
SELECT id, lane, tenant_id FROM changed;

-- name: job_leases
-- A canceled job's items in flight: their holders are told to cancel them upstream.
SELECT item_id FROM leases WHERE tenant_id = $2 AND job_id = $1;

-- name: notify_cancels
-- Every replica tells its predictors' streams: "<replica>|<item id>,<item id>,…".
SELECT pg_notify('fairway_cancels', $1);

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
