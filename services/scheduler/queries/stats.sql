-- Queue statistics for operators. Loaded once by `services/scheduler/sql.py`.

-- name: queue_by_tenant
-- From the counters and the leases; the oldest queued item of a tenant is the oldest of its
-- open jobs (a job's items are all created at submit) and of its items waiting for a retry.
WITH unfinished AS (
    SELECT tenant_id, sum(unfinished) AS n FROM queue_unfinished GROUP BY tenant_id HAVING sum(unfinished) > 0
), flight AS (
    SELECT tenant_id, count(*) AS n FROM leases GROUP BY tenant_id
), waiting AS (
    SELECT tenant_id, min(created_at) AS since FROM job_cursors GROUP BY tenant_id
    UNION ALL
    SELECT r.tenant_id, min(i.created_at) FROM retries r JOIN items i ON i.id = r.item_id GROUP BY r.tenant_id
)
SELECT u.tenant_id, (u.n - coalesce(f.n, 0))::bigint AS queued, coalesce(f.n, 0)::bigint AS processing,
       coalesce(extract(epoch FROM now() - w.since), 0)::float8 AS oldest_age
FROM unfinished u LEFT JOIN flight f USING (tenant_id)
LEFT JOIN (SELECT tenant_id, min(since) AS since FROM waiting GROUP BY tenant_id) w USING (tenant_id);

-- name: queue_by_lane
SELECT q.lane, (sum(q.unfinished) - coalesce(max(f.n), 0))::bigint AS queued,
       coalesce(max(f.n), 0)::bigint AS processing, count(*)::bigint AS tenants
FROM queue_unfinished q
LEFT JOIN (SELECT lane, count(*) AS n FROM leases GROUP BY lane) f USING (lane)
WHERE q.unfinished > 0 GROUP BY q.lane;

-- name: publish_dispatch_rates
-- Replica $1's counts now: its rows for other tenants go, and rows no replica has refreshed
-- for two minutes (replicas that stopped) are swept.
WITH dropped AS (
    DELETE FROM dispatch_rates
    WHERE (replica = $1 AND NOT tenant_id = ANY($2::text[])) OR published_at < now() - interval '2 minutes'
)
INSERT INTO dispatch_rates (replica, tenant_id, last_minute, published_at)
SELECT $1, tenant_id, n, now() FROM unnest($2::text[], $3::int[]) AS u(tenant_id, n)
ON CONFLICT (replica, tenant_id) DO UPDATE SET last_minute = excluded.last_minute, published_at = excluded.published_at;

-- name: dispatch_rates_elsewhere
-- The other live replicas' counts (published within $2 seconds), per tenant.
SELECT tenant_id, sum(last_minute)::bigint AS n FROM dispatch_rates
WHERE replica <> $1 AND published_at > now() - make_interval(secs => $2)
GROUP BY tenant_id;

-- name: publish_predictors
-- Replica $1's work streams now (worker, providers "a,b", free slots, connected at): as
-- publish_dispatch_rates, its rows for streams that closed go, and stopped replicas' are swept.
WITH dropped AS (
    DELETE FROM predictor_streams
    WHERE (replica = $1 AND NOT worker = ANY($2::text[])) OR published_at < now() - interval '2 minutes'
)
INSERT INTO predictor_streams (replica, worker, providers, free_slots, connected_at, published_at)
SELECT $1, worker, providers, free_slots, to_timestamp(connected_at), now()
FROM unnest($2::text[], $3::text[], $4::int[], $5::float8[]) AS u(worker, providers, free_slots, connected_at)
ON CONFLICT (replica, worker) DO UPDATE SET providers = excluded.providers, free_slots = excluded.free_slots,
    connected_at = excluded.connected_at, published_at = excluded.published_at;

-- name: predictors_elsewhere
-- The other live replicas' work streams (published within $2 seconds).
SELECT worker, providers, free_slots, extract(epoch FROM connected_at)::float8 AS connected_at
FROM predictor_streams
WHERE replica <> $1 AND published_at > now() - make_interval(secs => $2);
