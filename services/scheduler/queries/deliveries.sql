-- Provider deliveries already processed (migration 0008). Loaded once by `services/scheduler/sql.py`.

-- name: remember_delivery
-- True if delivery ($1 provider, $2 id) was not processed in the last $3 seconds: it is
-- recorded now, in the caller's transaction, which then applies it (a failure rolls the
-- record back, so the provider's retry is processed). A transaction recording the same
-- delivery at the same time waits for this one to end, then finds it. On the way, up to
-- 100 deliveries older than the window are dropped; rows another transaction is dropping
-- are skipped (SKIP LOCKED), so two of these never wait on each other. A delivery row is
-- locked before anything else in its transaction (see the lock order in outcomes.sql).
WITH pruned AS (
    DELETE FROM upstream_deliveries WHERE (provider, delivery_id) IN (
        SELECT provider, delivery_id FROM upstream_deliveries
        WHERE seen_at < now() - make_interval(secs => $3) AND (provider, delivery_id) <> ($1, $2)
        ORDER BY seen_at LIMIT 100 FOR UPDATE SKIP LOCKED)
)
INSERT INTO upstream_deliveries (provider, delivery_id) VALUES ($1, $2)
ON CONFLICT (provider, delivery_id) DO UPDATE SET seen_at = now()
    WHERE upstream_deliveries.seen_at < now() - make_interval(secs => $3)
RETURNING true;
