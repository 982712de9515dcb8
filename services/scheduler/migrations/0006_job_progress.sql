-- A job's counts as every reader of a job means them, in one place: the counts on the job
-- row plus its completions not folded yet (`count_moves`), its leases in flight, and whether
-- an item waits for another attempt (`retrying`: the job has started). Queued is the rest.
-- A claim writes no job row, so `updated_at` is also moved by the job's latest lease.
CREATE VIEW job_progress AS
SELECT j.id, j.tenant_id, j.provider, j.model, j.operation, j.priority, j.metadata::text AS metadata, j.seq,
       j.items_total, j.items_total - (j.n_done + d.n) - j.n_failed - j.n_canceled - f.n AS n_pending,
       f.n AS n_processing, (j.n_done + d.n)::int AS n_done, j.n_failed, j.n_canceled, j.canceled,
       EXISTS (SELECT 1 FROM retries r WHERE r.job_id = j.id) AS retrying,
       j.created_at, greatest(j.updated_at, f.started) AS updated_at, j.finished_at
FROM jobs j
CROSS JOIN LATERAL (SELECT count(*) AS n, max(started_at) AS started FROM leases l
                    WHERE l.tenant_id = j.tenant_id AND l.job_id = j.id) f
CROSS JOIN LATERAL (SELECT coalesce(sum(n_done), 0) AS n FROM count_moves m
                    WHERE m.tenant_id = j.tenant_id AND m.lane = j.lane AND m.job_id = j.id) d;
