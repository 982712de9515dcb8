"""Migrations reproduce the schema: once, twice, from two replicas at once, and as an upgrade."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from services.scheduler import migrations
from services.scheduler.migrations import load_migrations, migrate
from services.scheduler.sql import QUERIES
from tests.conftest import fresh_database

CATALOG = {
    "columns": """SELECT table_name, column_name, data_type, is_nullable, column_default
                  FROM information_schema.columns WHERE table_schema = 'public'
                  ORDER BY table_name, column_name""",
    "indexes": "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 2",
    "constraints": """SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
                      FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2""",
    "sequences": "SELECT sequence_name FROM information_schema.sequences ORDER BY 1",
    "versions": "SELECT version, name FROM schema_migrations ORDER BY 1",
}


async def schema(dsn: str) -> dict[str, list[tuple[object, ...]]]:
    conn = await asyncpg.connect(dsn)
    try:
        return {name: [tuple(r) for r in await conn.fetch(q)] for name, q in CATALOG.items()}
    finally:
        await conn.close()


async def migrate_dsn(dsn: str) -> list[int]:
    conn = await asyncpg.connect(dsn)
    try:
        return await migrate(conn)
    finally:
        await conn.close()


async def test_applying_twice_changes_nothing(database_url: str) -> None:
    everything = [m.version for m in load_migrations()]
    assert await migrate_dsn(database_url) == everything
    first = await schema(database_url)
    assert await migrate_dsn(database_url) == []
    assert await schema(database_url) == first
    assert ("queue_counts", "queue_counts_pkey") in {(t, i) for t, i, _ in first["indexes"]}


async def test_two_replicas_starting_at_once_build_the_same_schema(postgres_dsn: str, database_url: str) -> None:
    await migrate_dsn(database_url)
    expected = await schema(database_url)
    racing = await fresh_database(postgres_dsn)
    applied = await asyncio.gather(migrate_dsn(racing), migrate_dsn(racing))
    assert sorted(applied, key=len) == [[], [m.version for m in load_migrations()]]
    assert await schema(racing) == expected


async def test_upgrade_backfills_the_queue_counters(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(migrations, "load_migrations", lambda: load_migrations()[:1])
    await migrate_dsn(database_url)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("INSERT INTO tenants (id, key_hash, weight, max_queued) VALUES ('t', 'k', 1, 100)")
        job = uuid.uuid4()
        await conn.execute(
            "INSERT INTO jobs (id, tenant_id, provider, model, operation, lane, items_total, n_pending) "
            "VALUES ($1, 't', 'replicate', 'm', 'prediction', 'replicate:create', 3, 3)", job)
        for status in ("PENDING", "PENDING", "PROCESSING", "DONE"):
            await conn.execute(
                "INSERT INTO items (id, job_id, tenant_id, lane, priority, seq, ref, input, status) "
                "VALUES (gen_random_uuid(), $1, 't', 'replicate:create', 0, 1, 'r', '{}', $2)", job, status)
        await conn.execute("UPDATE items SET lease = 1 WHERE status = 'PROCESSING'")
        monkeypatch.undo()
        assert await migrate(conn) == [m.version for m in load_migrations()][1:]
        assert await conn.fetchval("SELECT unfinished FROM queue_counts WHERE tenant_id = 't'") == 3
        resync = await conn.fetch(QUERIES["queue_counts"])
        assert [(r["tenant_id"], r["pending"], r["processing"]) for r in resync] == [("t", 2, 1)]
    finally:
        await conn.close()
