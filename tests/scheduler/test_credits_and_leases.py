"""Credits, leases, retries and cancel through the real service and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import grpc
import pytest
from fairway.scheduler.v1 import scheduler_pb2 as pb

from services.scheduler import servicer
from services.scheduler.events import watch
from services.scheduler.sql import QUERIES
from tests.scheduler.conftest import (
    Client,
    FakePredictor,
    StartScheduler,
    counters_match_items,
    ledger_reconciles,
)


async def test_concurrent_submits_never_overdraw(client: Client, db: asyncpg.Connection) -> None:
    await client.tenant("payer", credits=150)

    async def submit() -> bool:
        try:
            await client.submit("payer", 2)
            return True
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION  # 402 insufficient_credits
            return False

    accepted = await asyncio.gather(*(submit() for _ in range(100)))
    assert sum(accepted) == 75
    assert await db.fetchval("SELECT credits FROM tenants WHERE id = 'payer'") == 0
    assert await db.fetchval("SELECT count(*) FROM items WHERE tenant_id = 'payer'") == 150
    await ledger_reconciles(db)
    await counters_match_items(db)


async def test_queue_limit_refuses_at_submit(client: Client) -> None:
    await client.tenant("small", max_queued=10)
    await client.submit("small", 8)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await client.submit("small", 3)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # 429 queue_full
    assert dict(refused.value.trailing_metadata() or ()).get("retry-after")
    await client.submit("small", 2)
    with pytest.raises(grpc.aio.AioRpcError) as never:
        await client.submit("small", 11)
    assert "split it into jobs of at most 10 items" in (never.value.details() or "")
    assert "retry-after" not in dict(never.value.trailing_metadata() or ())  # waiting cannot help


async def test_charge_at_done_refund_at_failed_and_canceled(
    client: Client, predictor: FakePredictor, db: asyncpg.Connection
) -> None:
    await client.tenant("payer", credits=100)
    job = await client.submit("payer", 10)
    predictor.ready(7)
    got = await predictor.take(7)
    assert (await predictor.complete(got[:4])).accepted
    assert (await predictor.fail(got[4:], "bad input", retryable=False)).accepted  # permanent: at once
    await client.api.CancelJob(pb.CancelJobRequest(tenant="payer", job_id=job.id))
    final = await client.api.GetJob(pb.GetJobRequest(tenant="payer", job_id=job.id))
    assert (final.counts.done, final.counts.failed, final.counts.canceled) == (4, 3, 3)
    assert await db.fetchval("SELECT credits FROM tenants WHERE id = 'payer'") == 96
    kinds = dict(await db.fetch(
        "SELECT kind, count(*) FROM credit_ledger WHERE tenant_id = 'payer' GROUP BY kind"
    ))
    assert kinds == {"grant": 1, "reserve": 1, "charge": 4, "refund": 6}
    # A second completion of a DONE item is refused and charges nothing.
    assert (await predictor.complete(got[:1])).refused == [got[0].item_id]
    await ledger_reconciles(db)
    await counters_match_items(db)


async def test_expired_lease_returns_the_item_and_fences_the_old_holder(
    start_scheduler: StartScheduler, database_url: str
) -> None:
    app = await start_scheduler(FAIRWAY_LEASE_SECONDS=0.3)
    client = Client(app)
    predictor = FakePredictor(client)
    db = await asyncpg.connect(database_url)
    try:
        await client.tenant("t", credits=10)
        await client.submit("t", 1)
        predictor.ready(2)
        (first,) = await predictor.take(1)
        assert first.lease_seconds == 0.3  # the length, not only the scheduler's clock's expiry
        # No heartbeat: the reaper hands the item back and it is dispatched again.
        (second,) = await predictor.take(1)
        assert second.item_id == first.item_id and second.lease != first.lease
        assert (second.attempt, first.attempt) == (2, 1)
        assert (await predictor.complete([first])).refused == [first.item_id]
        assert (await predictor.complete([second])).accepted == [second.item_id]
        assert (await predictor.complete([second])).refused == [second.item_id]
        row = await db.fetchrow("SELECT status, attempts FROM items WHERE id = $1", uuid.UUID(first.item_id))
        assert (row["status"], row["attempts"]) == ("DONE", 2)
        assert await db.fetchval("SELECT count(*) FROM credit_ledger WHERE kind = 'charge'") == 1
        await ledger_reconciles(db)
    finally:
        await db.close()
        await predictor.close()
        await client.close()


async def test_retries_back_off_then_fail_with_the_last_error(
    start_scheduler: StartScheduler, database_url: str
) -> None:
    app = await start_scheduler(FAIRWAY_MAX_ATTEMPTS=3, FAIRWAY_RETRY_BASE_SECONDS=0.01)
    client = Client(app)
    predictor = FakePredictor(client)
    db = await asyncpg.connect(database_url)
    try:
        await client.tenant("t", credits=5)
        job = await client.submit("t", 1)
        for attempt in (1, 2, 3):
            predictor.ready(1)
            (a,) = await predictor.take(1)
            assert a.attempt == attempt
            assert (await predictor.fail([a], f"upstream 503 #{attempt}", retryable=True)).accepted
        row = await db.fetchrow("SELECT status, error, attempts FROM items WHERE job_id = $1", uuid.UUID(job.id))
        assert dict(row) == {"status": "FAILED", "error": "upstream 503 #3", "attempts": 3}
        assert await db.fetchval("SELECT credits FROM tenants WHERE id = 't'") == 5
        await ledger_reconciles(db)
    finally:
        await db.close()
        await predictor.close()
        await client.close()


async def test_retry_after_is_honoured(client: Client, predictor: FakePredictor, db: asyncpg.Connection) -> None:
    await client.tenant("t")
    await client.submit("t", 1)
    predictor.ready(1)
    (a,) = await predictor.take(1)
    await predictor.fail([a], "429", retryable=True, retry_after_s=30.0)
    wait = await db.fetchval(
        "SELECT extract(epoch FROM run_after - now()) FROM retries WHERE item_id = $1", uuid.UUID(a.item_id)
    )
    assert 25.0 < wait <= 30.0
    await counters_match_items(db)


async def test_idempotent_submit_and_paginated_listings(client: Client) -> None:
    await client.tenant("t")
    first = await client.submit("t", 3, key="order-1")
    again = await client.submit("t", 3, key="order-1")
    assert again.id == first.id
    with pytest.raises(grpc.aio.AioRpcError) as conflict:
        await client.submit("t", 4, key="order-1")
    assert conflict.value.code() == grpc.StatusCode.ALREADY_EXISTS
    for _ in range(4):
        await client.submit("t", 1)
    seen, after = [], ""
    while True:
        page = await client.api.ListJobs(pb.ListJobsRequest(tenant="t", limit=2, after=after))
        seen += [j.id for j in page.jobs]
        if not page.next:
            break
        after = page.next
    assert len(seen) == len(set(seen)) == 5 and seen[-1] == first.id
    items = await client.api.ListItems(pb.ListItemsRequest(tenant="t", job_id=first.id, limit=2))
    rest = await client.api.ListItems(pb.ListItemsRequest(tenant="t", job_id=first.id, limit=2, after=items.next))
    assert [i.ref for i in items.items] + [i.ref for i in rest.items] == ["r0", "r1", "r2"] and not rest.next


async def test_watch_streams_item_and_job_events(client: Client, predictor: FakePredictor) -> None:
    await client.tenant("t")
    job = await client.submit("t", 2)
    events = client.api.WatchJob(pb.WatchJobRequest(tenant="t", job_id=job.id))
    predictor.ready(2)
    await predictor.complete(await predictor.take(2))
    statuses: list[tuple[str, int]] = []
    last = None
    async for event in events:
        if event.HasField("item"):
            statuses.append((event.item.ref, event.item.status))
        else:
            last = event.job
    assert last is not None and last.status == pb.JOB_DONE
    assert {(ref, pb.DONE) for ref in ("r0", "r1")} <= set(statuses)


async def test_watch_of_a_job_the_caller_cannot_see_is_not_found(client: Client) -> None:
    await client.tenant("t")
    await client.tenant("u")
    job = await client.submit("t", 1)
    for tenant, job_id in (("u", job.id), ("t", str(uuid.uuid4())), ("t", "not-a-job")):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            _ = [e async for e in client.api.WatchJob(pb.WatchJobRequest(tenant=tenant, job_id=job_id))]
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND, (tenant, job_id)


async def test_watch_sends_the_last_changes_of_a_job_that_finishes_between_its_reads(
    client: Client, predictor: FakePredictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    await client.tenant("t")
    job = await client.submit("t", 2)
    predictor.ready(2)
    taken = await predictor.take(2)
    armed = True

    class FinishingPool:
        """The watcher's pool: the job finishes right after the watcher first reads its items."""

        def __init__(self, pool: asyncpg.Pool) -> None:
            self._pool = pool

        def __getattr__(self, name: str) -> Any:
            return getattr(self._pool, name)

        async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
            nonlocal armed
            rows = await self._pool.fetch(query, *args)
            if armed and query == QUERIES["items_changed_since"]:
                armed = False
                await predictor.complete(taken)
            return list(rows)

    monkeypatch.setattr(servicer, "watch", lambda pool, *rest: watch(FinishingPool(pool), *rest))
    events = [e async for e in client.api.WatchJob(pb.WatchJobRequest(tenant="t", job_id=job.id))]
    assert not armed
    assert events[-1].job.status == pb.JOB_DONE
    assert {(e.item.ref, e.item.status) for e in events if e.HasField("item")} >= {("r0", pb.DONE), ("r1", pb.DONE)}


async def test_watch_delivers_a_change_committed_out_of_number_order(
    client: Client, predictor: FakePredictor, db: asyncpg.Connection
) -> None:
    await client.tenant("t")
    job = await client.submit("t", 2)
    stream: AsyncIterator[pb.JobEvent] = aiter(client.api.WatchJob(pb.WatchJobRequest(tenant="t", job_id=job.id)))

    async def until(seen: Callable[[pb.JobEvent], bool]) -> pb.JobEvent:
        async with asyncio.timeout(15):
            while not seen(event := await anext(stream)):
                pass
            return event

    predictor.ready(2)
    first, second = await predictor.take(2)
    # A change numbered first but committed last: its statement stalls before the commit.
    slow = db.transaction()
    await slow.start()
    await db.execute(
        "UPDATE items SET error = 'late', change_seq = nextval('item_changes') WHERE id = $1",
        uuid.UUID(first.item_id),
    )
    await predictor.complete([second])
    await until(lambda e: e.HasField("item") and e.item.id == second.item_id and e.item.status == pb.DONE)
    await slow.commit()
    late = await until(lambda e: e.HasField("item") and e.item.error == "late")
    assert late.item.id == first.item_id
    await predictor.complete([first])
    done = await until(lambda e: e.HasField("job") and e.job.status == pb.JOB_DONE)
    # Resuming after the last event replays nothing: once terminal, everything was read.
    replay = [e async for e in client.api.WatchJob(pb.WatchJobRequest(tenant="t", job_id=job.id, after_seq=done.seq))]
    assert [e.WhichOneof("event") for e in replay] == ["job"]


async def test_queue_stats_per_tenant_and_lane(client: Client, predictor: FakePredictor) -> None:
    await client.tenant("a")
    await client.tenant("b")
    await client.submit("a", 5)
    await client.submit("b", 3, provider="openai", model="gpt-4o-mini")
    predictor.ready(2)
    await predictor.take(2)
    stats = await client.api.GetQueueStats(pb.GetQueueStatsRequest())
    tenants = {t.tenant: (t.queued + t.processing, t.dispatched_last_minute) for t in stats.tenants}
    assert tenants["a"][0] == 5 and tenants["b"][0] == 3
    assert sum(d for _, d in tenants.values()) == 2
    lanes = {lane.lane: (lane.queued, lane.processing, lane.tenants) for lane in stats.lanes}
    assert {k: v[0] + v[1] for k, v in lanes.items()} == {"replicate:create": 5, "openai:gpt-4o-mini": 3}


async def test_queue_stats_list_a_tenant_that_dispatched_lately_and_has_nothing_left(
    client: Client, predictor: FakePredictor
) -> None:
    await client.tenant("quick")
    await client.submit("quick", 2)
    predictor.ready(2)
    await predictor.complete(await predictor.take(2))
    stats = await client.api.GetQueueStats(pb.GetQueueStatsRequest())
    listed = {t.tenant: (t.queued, t.processing, t.dispatched_last_minute) for t in stats.tenants}
    assert listed == {"quick": (0, 0, 2)}


async def test_values_postgresql_cannot_store_are_invalid_and_change_nothing(
    client: Client, db: asyncpg.Connection
) -> None:
    await client.tenant("t", credits=10)
    bad_calls = [
        client.api.SubmitJob(pb.SubmitJobRequest(
            tenant="t", provider="replicate", model="acme/\x00fast", items=[pb.ItemInput(ref="a", input_json="{}")])),
        client.api.ListJobs(pb.ListJobsRequest(tenant="t", after=str(2**64))),
    ]
    for n, call in enumerate(bad_calls):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (n, caught.value.details())
    # A balance that would overflow: a valid amount this balance cannot take (409 at the gateway).
    with pytest.raises(grpc.aio.AioRpcError) as overflow:
        await client.api.AddCredits(pb.AddCreditsRequest(id="t", amount=2**63 - 1))
    assert overflow.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert dict(overflow.value.trailing_metadata() or ()).get("fairway-error") == "balance_conflict"
    assert (overflow.value.details() or "").startswith("amount: ")
    assert await db.fetchval("SELECT credits FROM tenants WHERE id = 't'") == 10
    assert await db.fetchval("SELECT count(*) FROM jobs") == 0
    await ledger_reconciles(db)


async def test_an_upstream_call_recorded_for_one_item_is_refused_for_another(
    client: Client, predictor: FakePredictor, db: asyncpg.Connection
) -> None:
    # A predictor adopting an orphaned prediction may offer one another item holds.
    await client.tenant("t")
    await client.submit("t", 2)
    predictor.ready(2)
    first, second = await predictor.take(2)
    reply = await client.dispatch.RecordUpstream(pb.RecordUpstreamRequest(
        lease=pb.LeaseRef(item_id=first.item_id, lease=first.lease), upstream_id="pred-1"))
    assert reply.accepted
    with pytest.raises(grpc.aio.AioRpcError) as taken:
        await client.dispatch.RecordUpstream(pb.RecordUpstreamRequest(
            lease=pb.LeaseRef(item_id=second.item_id, lease=second.lease), upstream_id="pred-1"))
    assert taken.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert dict(taken.value.trailing_metadata() or ()).get("fairway-error") == "upstream_taken"
    held = await db.fetch("SELECT id::text FROM items WHERE upstream_id = 'pred-1'")
    assert [r["id"] for r in held] == [first.item_id]


async def test_a_job_waiting_to_retry_has_started(client: Client, predictor: FakePredictor) -> None:
    await client.tenant("t")
    job = await client.submit("t", 1)
    assert (await client.api.GetJob(pb.GetJobRequest(tenant="t", job_id=job.id))).status == pb.JOB_PENDING
    for status, listed in ((pb.JOB_PENDING, True), (pb.JOB_PROCESSING, False)):
        page = await client.api.ListJobs(pb.ListJobsRequest(tenant="t", status=status))
        assert (job.id in {j.id for j in page.jobs}) is listed, status
    predictor.ready(1)
    taken = await predictor.take(1)
    # No job row is written by a claim, yet the job's updated_at moves when it starts.
    started = await client.api.GetJob(pb.GetJobRequest(tenant="t", job_id=job.id))
    assert started.updated_at > job.updated_at
    await predictor.fail(taken, "503", retryable=True, retry_after_s=3600)
    seen = await client.api.GetJob(pb.GetJobRequest(tenant="t", job_id=job.id))
    assert (seen.status, seen.counts.pending) == (pb.JOB_PROCESSING, 1)
    assert seen.updated_at > started.updated_at  # the retry too, though it ended the lease
    for status, listed in ((pb.JOB_PENDING, False), (pb.JOB_PROCESSING, True)):
        page = await client.api.ListJobs(pb.ListJobsRequest(tenant="t", status=status))
        assert (job.id in {j.id for j in page.jobs}) is listed, status


@pytest.mark.parametrize("cut", ["pg_cancel_backend", "pg_terminate_backend"])
async def test_a_statement_the_database_cuts_off_is_unavailable(
    client: Client, db: asyncpg.Connection, database_url: str, cut: str
) -> None:
    # A submit waits on the tenant's row lock; the database then cancels its statement (an
    # operator, a shutdown) or ends its connection: the caller is told to retry, and
    # nothing was queued.
    await client.tenant("t", credits=10)
    held = db.transaction()
    await held.start()
    await db.execute("SELECT 1 FROM tenants WHERE id = 't' FOR UPDATE")
    submit = asyncio.ensure_future(client.submit("t", 1))
    admin = await asyncpg.connect(database_url)
    try:
        # PostgreSQL tells no one when a backend starts waiting on a lock: look until it does.
        async with asyncio.timeout(10):
            while not await admin.fetchval(  # noqa: ASYNC110
                f"SELECT {cut}(pid) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND query LIKE '%FOR UPDATE OF t%'"
            ):
                await asyncio.sleep(0.01)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await submit
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value.details()
    finally:
        await held.rollback()
        await admin.close()
    assert await db.fetchval("SELECT count(*) FROM jobs") == 0
    assert await db.fetchval("SELECT credits FROM tenants WHERE id = 't'") == 10
