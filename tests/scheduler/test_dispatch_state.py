"""The dispatch state (job cursors, leases, retries) under concurrency, retries and cuts."""

from __future__ import annotations

import asyncio
import random
import uuid
from types import SimpleNamespace

import asyncpg
import pytest
from fairway.scheduler.v1 import scheduler_pb2 as pb

from services.scheduler import claims, dispatcher, events
from services.scheduler.fairness import LaneShares
from services.scheduler.rates import RecentCounts
from services.scheduler.server import SchedulerApp
from services.scheduler.sql import QUERIES
from tests.scheduler.conftest import (
    Client,
    FakePredictor,
    Replicas,
    StartPair,
    StartScheduler,
    counters_match_items,
)

LANE = "replicate:create"


async def test_concurrent_claims_lease_every_item_exactly_once(
    scheduler: SchedulerApp, client: Client, database_url: str
) -> None:
    # Jobs of every size and two priorities; four claimers race until nothing is left.
    sizes = {"a": [1, 1, 1, 50, 2], "b": [300], "c": [7, 1, 40, 1, 1, 1, 25]}
    for tenant, jobs in sizes.items():
        await client.tenant(tenant)
        for k, n in enumerate(jobs):
            await client.submit(tenant, n, priority=k % 2)
    total = sum(sum(jobs) for jobs in sizes.values())
    conns = [await asyncpg.connect(database_url) for _ in range(4)]
    leased: list[uuid.UUID] = []

    async def claimer(conn: asyncpg.Connection, seed: int) -> None:
        rng = random.Random(seed)
        while len(leased) < total:
            picks = {t: rng.randint(1, 40) for t in sizes if rng.random() < 0.8}
            rows = await claims.claim(conn, LANE, picks, f"w{seed}", 30.0)
            leased.extend(r["id"] for r in rows if r["id"] is not None)

    try:
        await asyncio.gather(*(claimer(conn, k) for k, conn in enumerate(conns)))
        assert len(leased) == len(set(leased)) == total
        assert set(leased) == {r["id"] for r in await conns[0].fetch("SELECT id FROM items")}
        assert await conns[0].fetchval("SELECT count(*) FROM job_cursors") == 0
        await counters_match_items(conns[0])
    finally:
        for conn in conns:
            await conn.close()


async def test_priority_first_then_due_retries_then_jobs_in_order(
    start_scheduler: StartScheduler,
) -> None:
    app = await start_scheduler(FAIRWAY_RETRY_BASE_SECONDS=0)
    client = Client(app)
    predictor = FakePredictor(client)
    try:
        await client.tenant("t")
        low = await client.submit("t", 4, priority=0)
        predictor.ready(2)
        first = await predictor.take(2)
        assert {a.job_id for a in first} == {low.id}
        retried = first[0]
        await predictor.fail([retried], "503", retryable=True)
        high = await client.submit("t", 1, priority=5)
        predictor.ready(2)
        second = {(a.job_id, a.item_id if a.job_id == low.id else "", a.attempt) for a in await predictor.take(2)}
        # The higher priority job first, then the retry (its backoff is over) before the
        # low job's next fresh item.
        assert second == {(high.id, "", 1), (low.id, retried.item_id, 2)}
        predictor.ready(5)
        rest = await predictor.take(2)
        assert {a.job_id for a in rest} == {low.id} and retried.item_id not in {a.item_id for a in rest}
    finally:
        await predictor.close()
        await client.close()


async def test_a_hand_back_costs_no_attempt(scheduler: SchedulerApp, client: Client, db: asyncpg.Connection) -> None:
    await client.tenant("t", credits=5)
    await client.submit("t", 1)
    async with scheduler.pool.acquire() as conn:
        (row,) = [r for r in await claims.claim(conn, LANE, {"t": 1}, "gone", 30.0) if r["id"] is not None]
    await scheduler.outcomes.hand_back([pb.LeaseRef(item_id=str(row["id"]), lease=row["lease"])])
    item = await db.fetchrow("SELECT status, attempts, error FROM items WHERE id = $1", row["id"])
    assert dict(item) == {"status": "PENDING", "attempts": 0, "error": "not delivered to a predictor"}
    assert await db.fetchval("SELECT count(*) FROM retries WHERE item_id = $1", row["id"]) == 1
    await counters_match_items(db)
    predictor = FakePredictor(client)
    try:
        predictor.ready(1)
        (again,) = await predictor.take(1)
        assert (again.item_id, again.attempt) == (str(row["id"]), 1)
        assert (await predictor.complete([again])).accepted
        assert await db.fetchval("SELECT credits FROM tenants WHERE id = 't'") == 4
    finally:
        await predictor.close()


async def test_a_watcher_on_one_replica_sees_what_another_changed(
    replica_pair: StartPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only the NOTIFY from the replica that changed the items can wake the watcher in time.
    monkeypatch.setattr(events, "SAFETY_SECONDS", 3600.0)
    monkeypatch.setattr(events, "LOOKBACK_SECONDS", 3600.0)
    ca, cb = await replica_pair()
    predictor = FakePredictor(cb)
    try:
        await ca.tenant("t")
        job = await ca.submit("t", 3)
        stream = ca.api.WatchJob(pb.WatchJobRequest(tenant="t", job_id=job.id))
        first = await anext(aiter(stream))
        assert first.HasField("item") or first.HasField("job")
        predictor.ready(3)
        await predictor.complete(await predictor.take(3))
        done: set[str] = set()
        async with asyncio.timeout(10):
            async for event in stream:
                if event.HasField("item") and event.item.status == pb.DONE:
                    done.add(event.item.id)
                if event.HasField("job") and event.job.status == pb.JOB_DONE:
                    break
        assert len(done) == 3
    finally:
        await predictor.close()


async def test_a_cut_notification_connection_is_restored(
    replicas_without_resync: Replicas, database_url: str
) -> None:
    ca, cb, predictor = replicas_without_resync
    restored = asyncio.Event()
    ca.app.notices.on_reconnect(restored.set)
    admin = await asyncpg.connect(database_url)
    try:
        await cb.tenant("t")
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", ca.app.notices.server_pid())
        async with asyncio.timeout(10):
            await restored.wait()
        # A submit on B reaches A only by NOTIFY (no resync runs during the test).
        await cb.submit("t", 2)
        predictor.ready(2)
        assert {x.tenant for x in await predictor.take(2, timeout_s=10)} == {"t"}
    finally:
        await admin.close()


async def test_a_submit_heard_during_a_resync_is_not_lost(
    scheduler: SchedulerApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A submit announced after the resync read the counts (so not in them) must still be in
    the index when the resync is applied; otherwise it stays hidden until the next one."""
    dispatch = scheduler.dispatcher
    pool = scheduler.pool

    async def fetch(query: str, *args: object) -> list[asyncpg.Record]:
        rows = await pool.fetch(query, *args)
        if query == QUERIES["queue_counts"]:
            dispatch.heard_backlog(f"another-replica|{LANE}|late|3|0")
        return list(rows)

    monkeypatch.setattr(dispatch, "_pool", SimpleNamespace(fetch=fetch, fetchval=pool.fetchval))
    await dispatch.resync()
    assert dispatch.lanes[LANE].backlog("late") == 3


async def test_a_catch_up_resyncs_at_once_in_the_resync_loop(
    start_scheduler: StartScheduler, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A reconnect of the notice connection asks for a resync now, not at the next period:
    # the resync loop runs it (no task of its own that stopping could leave behind).
    monkeypatch.setattr(dispatcher, "RESYNC_SECONDS", 3600.0)
    resynced = asyncio.Event()
    resync = dispatcher.Dispatcher.resync

    async def noted(self: dispatcher.Dispatcher) -> None:
        await resync(self)
        resynced.set()

    monkeypatch.setattr(dispatcher.Dispatcher, "resync", noted)
    app = await start_scheduler()
    d = app.dispatcher
    d.lanes.setdefault(LANE, LaneShares()).set_backlog("ghost", 5)  # no predictor: nothing claims it
    resynced.clear()
    d.catch_up()
    d.catch_up()
    async with asyncio.timeout(5):
        await resynced.wait()
    assert d.lanes[LANE].backlog("ghost") == 0
    assert {t.name for t in app.supervisor.tasks} >= {"resync", "dispatch", "notices"}


async def test_claims_serve_a_job_side_by_side_from_its_stripes(
    scheduler: SchedulerApp, client: Client, database_url: str, db: asyncpg.Connection
) -> None:
    await client.tenant("t")
    await client.submit("t", 1000)  # four stripes of 250 items
    first, second = await asyncpg.connect(database_url), await asyncpg.connect(database_url)
    try:
        held = first.transaction()
        await held.start()
        mine = await claims.claim(first, LANE, {"t": 10}, "a", 30.0)
        # The first claim holds stripe 0 until it commits; the second takes stripe 1 without
        # waiting (a wait would run into the timeout), then the rest, and comes back short
        # with stripes left: held elsewhere, not run dry.
        async with asyncio.timeout(10):
            theirs = await claims.claim(second, LANE, {"t": 10}, "b", 30.0)
            rest = await claims.claim(second, LANE, {"t": 1000}, "b", 30.0)
        seqs = "SELECT array_agg(seq ORDER BY seq) FROM items WHERE id = ANY($1::uuid[])"
        assert await db.fetchval(seqs, [r["id"] for r in mine]) == list(range(1, 11))
        assert await db.fetchval(seqs, [r["id"] for r in theirs]) == list(range(251, 261))
        assert len([r for r in rest if r["id"] is not None]) == 740
        assert claims.short_of_room({"t": 1000}, rest) == ["t"]
        assert await claims.stripes_left(second, LANE, ["t"]) == {"t"}
        await held.commit()
        last = await claims.claim(second, LANE, {"t": 1000}, "b", 30.0)
        assert len([r for r in last if r["id"] is not None]) == 240
        assert await claims.stripes_left(second, LANE, ["t"]) == set()
        ran_dry = await claims.claim(second, LANE, {"t": 5}, "b", 30.0)
        assert [r["id"] for r in ran_dry] == [None]
    finally:
        await first.close()
        await second.close()
    await counters_match_items(db)


async def test_counts_are_exact_before_the_fold_and_the_fold_finishes_the_job(
    start_scheduler: StartScheduler, database_url: str
) -> None:
    # No folding but by hand here: completions committed by a replica that died before folding.
    app = await start_scheduler(FAIRWAY_FOLD_SWEEP_SECONDS=3600)
    client = Client(app)
    conn = await asyncpg.connect(database_url)
    try:
        await client.tenant("t")
        job = await client.submit("t", 3)
        rows = [r for r in await claims.claim(conn, LANE, {"t": 3}, "gone", 30.0) if r["id"] is not None]
        await conn.fetch(QUERIES["complete_items"], [r["id"] for r in rows], [r["lease"] for r in rows],
                         ["{}"] * 3, [None] * 3)
        seen = await client.api.GetJob(pb.GetJobRequest(tenant="t", job_id=job.id))
        assert (seen.counts.done, seen.counts.pending, seen.counts.processing) == (3, 0, 0)
        assert seen.status == pb.JOB_PROCESSING  # finished when its moves are folded
        tenant = await client.api.GetTenant(pb.GetTenantRequest(id="t"))
        assert (tenant.queued, tenant.processing) == (0, 0)
        assert await app.outcomes.counts.fold() == 1
        assert (await client.api.GetJob(pb.GetJobRequest(tenant="t", job_id=job.id))).status == pb.JOB_DONE
        await counters_match_items(conn)
    finally:
        await conn.close()
        await client.close()


async def test_counts_left_by_a_replica_that_died_are_folded_by_another(
    start_scheduler: StartScheduler, database_url: str
) -> None:
    # Completions committed straight to the database stand for a replica killed before its
    # folder ran: only another replica's sweep can finish the job.
    first = Client(await start_scheduler())
    conn = await asyncpg.connect(database_url)
    try:
        await first.tenant("t")
        job = await first.submit("t", 2)
        await first.app.outcomes.counts.stop()  # the first replica's folder is gone
        rows = [r for r in await claims.claim(conn, LANE, {"t": 2}, "gone", 30.0) if r["id"] is not None]
        await conn.fetch(QUERIES["complete_items"], [r["id"] for r in rows], [r["lease"] for r in rows],
                         ["{}"] * 2, [None] * 2)
        second = Client(await start_scheduler())
        try:
            async with asyncio.timeout(15):
                async for event in second.api.WatchJob(pb.WatchJobRequest(tenant="t", job_id=job.id)):
                    if event.HasField("job") and event.job.status == pb.JOB_DONE:
                        break
            assert await conn.fetchval("SELECT count(*) FROM count_moves") == 0
        finally:
            await second.close()
    finally:
        await conn.close()
        await first.close()


async def test_a_short_claim_forgets_a_backlog_only_when_no_stripes_are_left(scheduler: SchedulerApp) -> None:
    # Two tenants came back with nothing: one's stripes were held by another replica's claim
    # (`stripes_left` named it), the other had run dry. Only the latter's count is dropped.
    shares = LaneShares()
    shares.set_backlog("held", 10)
    shares.set_backlog("dry", 10)
    scheduler.dispatcher._correct_index(shares, {"held": 5, "dry": 5}, {}, ["held", "dry"], {"held"})
    assert (shares.backlog("held"), shares.backlog("dry")) == (10, 0)


async def test_queue_stats_count_the_dispatches_of_every_replica(replica_pair: StartPair) -> None:
    ca, cb = await replica_pair()
    predictor = FakePredictor(ca)
    try:
        await ca.tenant("t")
        await ca.submit("t", 3)
        predictor.ready(3)
        await predictor.complete(await predictor.take(3))
        await ca.app.dispatcher.rates.publish()  # as its publisher does every few seconds
        for client in (ca, cb):
            stats = await client.api.GetQueueStats(pb.GetQueueStatsRequest())
            assert {t.tenant: t.dispatched_last_minute for t in stats.tenants} == {"t": 3}
        # A minute later, idle, a replica clears what it published.
        ca.app.dispatcher.rates.recent = RecentCounts()
        await ca.app.dispatcher.rates.publish()
        assert list((await cb.api.GetQueueStats(pb.GetQueueStatsRequest())).tenants) == []
    finally:
        await predictor.close()
