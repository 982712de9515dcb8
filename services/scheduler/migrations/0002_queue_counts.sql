-- Per (lane, tenant) counts of PENDING and PROCESSING items, kept in the same statements
-- that move items. Dispatch state, queue limits, max_concurrency and queue statistics read
-- these rows (at most lanes x tenants of them) instead of scanning a million items.

CREATE TABLE queue_counts (
    lane             text NOT NULL,
    tenant_id        text NOT NULL REFERENCES tenants (id),
    pending          bigint NOT NULL DEFAULT 0 CHECK (pending >= 0),
    processing       bigint NOT NULL DEFAULT 0 CHECK (processing >= 0),
    PRIMARY KEY (lane, tenant_id)
);
CREATE INDEX queue_counts_tenant ON queue_counts (tenant_id);

INSERT INTO queue_counts (lane, tenant_id, pending, processing)
SELECT lane, tenant_id, count(*) FILTER (WHERE status = 'PENDING'), count(*) FILTER (WHERE status = 'PROCESSING')
FROM items WHERE status IN ('PENDING', 'PROCESSING') GROUP BY lane, tenant_id;

-- The oldest queued item of a tenant, for queue statistics: one index probe per tenant.
CREATE INDEX items_pending_age ON items (tenant_id, created_at) WHERE status = 'PENDING';

-- The reaper's index, keyed on the lease instead of the status: an index whose predicate is
-- status = 'PROCESSING' matched the completion statements' own status test, and the planner,
-- believing few items in flight, scanned it (dead entries and all) instead of the primary key.
DROP INDEX items_leased;
CREATE INDEX items_leased ON items (leased_until) WHERE lease IS NOT NULL;
