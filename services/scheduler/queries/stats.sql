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
