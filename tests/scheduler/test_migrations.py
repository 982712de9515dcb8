"""Migrations reproduce the schema: once, twice, from two replicas at once, and as an upgrade."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
from fairway.scheduler.v1 import scheduler_pb2 as pb

from services.scheduler import migrations
from services.scheduler.migrations import load_migrations, migrate
from services.scheduler.sql import QUERIES
from tests.conftest import fresh_database
from tests.scheduler.conftest import Client, FakePredictor, StartScheduler, counters_match_items

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


async def test_upgrade_to_leases_dispatches_each_item_once(
    database_url: str, monkeypatch: pytest.MonkeyPatch, start_scheduler: StartScheduler
) -> None:
    """A 0003 database with items in every state: after 0004 the item in flight keeps its
    lease, the one backing off keeps waiting, and only the untouched ones are dispatched."""
    monkeypatch.setattr(migrations, "load_migrations", lambda: load_migrations()[:3])
    await migrate_dsn(database_url)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("INSERT INTO tenants (id, key_hash, weight, max_queued) VALUES ('t', 'k', 1, 100)")
        job, finished = uuid.uuid4(), uuid.uuid4()
        await conn.execute(
            "INSERT INTO jobs (id, tenant_id, provider, model, operation, lane, items_total, n_done) VALUES "
            "($1, 't', 'replicate', 'm', 'prediction', 'replicate:create', 5, 1), "
            "($2, 't', 'replicate', 'm', 'prediction', 'replicate:create', 1, 1)", job, finished)
        later = "now() + interval '1 hour'"
        states = [  # seq: status, attempts, lease, run_after
            ("DONE", 1, None, "now()"), ("PROCESSING", 1, 77, "now()"), ("PENDING", 1, None, later),
            ("PENDING", 0, None, "now()"), ("PENDING", 0, None, "now()"),
        ]
        for seq, (status, attempts, lease, run_after) in enumerate(states, start=1):
            await conn.execute(
                "INSERT INTO items (id, job_id, tenant_id, lane, priority, seq, ref, input, status, attempts, lease, "
                "leased_until, run_after) VALUES (gen_random_uuid(), $1, 't', 'replicate:create', 0, $2::int, "
                f"'r' || $2::text, '{{}}', $3, $4, $5, now() + interval '1 minute', {run_after})",
                job, seq, status, attempts, lease)
        # A job whose last item finished just before a crash left it unmarked.
        await conn.execute(
            "INSERT INTO items (id, job_id, tenant_id, lane, priority, seq, ref, input, status, attempts) "
            "VALUES (gen_random_uuid(), $1, 't', 'replicate:create', 0, 1, 'x', '{}', 'DONE', 1)", finished)
        await conn.execute("INSERT INTO queue_counts (lane, tenant_id, unfinished) VALUES ('replicate:create', 't', 4)")
        monkeypatch.undo()
        assert await migrate(conn) == [m.version for m in load_migrations()][3:]  # 0005: each job cursor its stripe 0
        await counters_match_items(conn)
        lease = await conn.fetchrow("SELECT l.lease, l.attempt, i.seq FROM leases l JOIN items i ON i.id = l.item_id")
        assert dict(lease) == {"lease": 77, "attempt": 1, "seq": 2}
        assert await conn.fetchval("SELECT dispatched FROM job_cursors WHERE job_id = $1", job) == 3

        client = Client(await start_scheduler())
        predictor = FakePredictor(client)
        try:
            predictor.ready(5)
            got = await predictor.take(2)
            ids = [uuid.UUID(a.item_id) for a in got]
            assert {r["seq"] for r in await conn.fetch("SELECT seq FROM items WHERE id = ANY($1)", ids)} == {4, 5}
            in_flight = await conn.fetchval("SELECT id FROM items WHERE job_id = $1 AND seq = 2", job)
            done = await predictor.complete([pb.Assignment(item_id=str(in_flight), lease=77), *got])
            assert len(done.accepted) == 3 and not done.refused
            assert predictor.received.empty()  # the item backing off is still waiting
            await counters_match_items(conn)
        finally:
            await predictor.close()
            await client.close()
    finally:
        await conn.close()
