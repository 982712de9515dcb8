"""Databases for the scheduler benchmarks: backlogs loaded in bulk, as a submit would count them.

    dsn = await fresh_db(server_dsn)
    await add_tenants(conn, 10_000)
    await add_backlog(conn, 10_000, 100)            # one job of 100 items for each of t0..t9999
    await add_backlog(conn, ["big"] * 10, 100_000)  # one tenant, ten jobs of 100,000 items
"""

from __future__ import annotations

from urllib.parse import urlsplit

import asyncpg

from services.common.embedded import create_database
from services.scheduler.fairness import LaneShares
from services.scheduler.sql import QUERIES

LANE = "replicate:create"


async def fresh_db(server_dsn: str) -> str:
    return await create_database(server_dsn, "fairway_bench")


async def drop_db(server_dsn: str, dsn: str) -> None:
    conn = await asyncpg.connect(server_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{urlsplit(dsn).path.lstrip("/")}" WITH (FORCE)')
    finally:
        await conn.close()


async def add_tenants(conn: asyncpg.Connection, n: int) -> list[str]:
    """Tenants t0 .. t{n-1}, weights 1, 2, 3 in turn."""
    await conn.execute(
        "INSERT INTO tenants (id, key_hash, weight, max_queued) "
        "SELECT 't' || g, sha256(('t' || g)::bytea), 1 + g % 3, 100000000 FROM generate_series(0, $1 - 1) g",
        n,
    )
    return [f"t{i}" for i in range(n)]


async def add_backlog(conn: asyncpg.Connection, tenants: int | list[str], per_job: int) -> None:
    """One job of `per_job` items for each tenant (`tenants` of them: t0, t1, ...; or a list of
    ids, where an id named k times gets k jobs), counted as a submit counts it."""
    ids = [f"t{i}" for i in range(tenants)] if isinstance(tenants, int) else tenants
    async with conn.transaction():
        await conn.execute(
            "CREATE TEMP TABLE new_jobs ON COMMIT DROP AS "
            "SELECT gen_random_uuid() AS id, t AS tenant_id FROM unnest($1::text[]) t", ids,
        )
        await conn.execute(
            "INSERT INTO jobs (id, tenant_id, provider, model, operation, lane, items_total) "
            "SELECT id, tenant_id, 'replicate', 'acme/fast', 'prediction', $1, $2 FROM new_jobs", LANE, per_job,
        )
        jobs = await conn.fetch(
            "SELECT id, lane, tenant_id, priority, seq, items_total, created_at FROM jobs "
            "WHERE id IN (SELECT id FROM new_jobs)",
        )
        await conn.executemany(QUERIES["open_job_cursor"], [tuple(j) for j in jobs])
        await conn.execute(
            "INSERT INTO items (id, job_id, tenant_id, lane, priority, seq, ref, input) "
            "SELECT gen_random_uuid(), j.id, j.tenant_id, $1, 0, s, 'r' || s, '{\"prompt\": \"a cat\"}' "
            "FROM new_jobs j, generate_series(1, $2) s", LANE, per_job,
        )
        await conn.execute(
            "INSERT INTO queue_counts (lane, tenant_id, unfinished) "
            "SELECT $1, tenant_id, count(*) * $2 FROM new_jobs GROUP BY tenant_id "
            "ON CONFLICT (lane, tenant_id) DO UPDATE SET unfinished = queue_counts.unfinished + excluded.unfinished",
            LANE, per_job,
        )
    # As autovacuum would have by the time such a backlog is dispatched: without it, the claim
    # is the first reader of each bulk-loaded page, and with data checksums (PostgreSQL 18's
    # default) setting its hint bits writes a full-page image to the WAL.
    await conn.execute("VACUUM (ANALYZE) items, jobs, job_cursors, queue_counts")


async def index_from_db(conn: asyncpg.Connection) -> LaneShares:
    """The dispatcher's resync: the index from the counters."""
    shares = LaneShares()
    for row in await conn.fetch(QUERIES["queue_counts"]):
        shares.set_backlog(row["tenant_id"], row["pending"])
    return shares
