-- Tenants: keys, policies, credits. Loaded once by `services/scheduler/sql.py`.

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
-- Queued = unfinished - in flight (the tenant's leases).
SELECT t.id, t.weight, t.max_concurrency, t.max_queued, t.credits,
       (u.n - f.n)::bigint AS queued, f.n::bigint AS processing
FROM tenants t
CROSS JOIN LATERAL (SELECT coalesce(sum(unfinished), 0) AS n FROM queue_unfinished q WHERE q.tenant_id = t.id) u
CROSS JOIN LATERAL (SELECT count(*) AS n FROM leases l WHERE l.tenant_id = t.id) f
WHERE t.id = $1;

-- name: list_tenants
-- A page in id order after $1 ('' = from the start); $2 = page size + 1, the extra row saying
-- that there is a next page. Keyset paging: a tenant created meanwhile moves no other.
SELECT t.id, t.weight, t.max_concurrency, t.max_queued, t.credits,
       (u.n - f.n)::bigint AS queued, f.n::bigint AS processing
FROM (SELECT id, weight, max_concurrency, max_queued, credits FROM tenants WHERE id > $1 ORDER BY id LIMIT $2) t
CROSS JOIN LATERAL (SELECT coalesce(sum(unfinished), 0) AS n FROM queue_unfinished q WHERE q.tenant_id = t.id) u
CROSS JOIN LATERAL (SELECT count(*) AS n FROM leases l WHERE l.tenant_id = t.id) f
ORDER BY t.id;

-- name: rotate_key
-- The new key's hash replaces the old in one statement: from its commit, the old key matches no tenant.
UPDATE tenants SET key_hash = $2 WHERE id = $1 RETURNING id;

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

-- name: tenant_policy
SELECT id, weight, max_concurrency FROM tenants WHERE id = $1;

-- name: notify_tenant
SELECT pg_notify('fairway_tenants', $1);
