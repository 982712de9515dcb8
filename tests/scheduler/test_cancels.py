"""A job's cancel and its items in flight, on real PostgreSQL and real gRPC streams: the
holders are told at once, on whichever replica holds their streams; the items stay leased
until their holders say how the upstream call ended, and that decides the item's end and
charge; an older predictor, or a holder that is gone, still ends every item once."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
from fairway.scheduler.v1 import scheduler_pb2 as pb

from tests.scheduler.conftest import (
    Client,
    FakePredictor,
    StartPair,
    StartScheduler,
    counters_match_items,
    ledger_reconciles,
)


async def _job(client: Client, tenant: str, job_id: str) -> pb.Job:
    job: pb.Job = await client.api.GetJob(pb.GetJobRequest(tenant=tenant, job_id=job_id))
    return job


async def _finished(client: Client, tenant: str, job_id: str) -> pb.Job:
    """The job once it is finished (a completion's count is folded moments after it commits)."""
    async with asyncio.timeout(10):
        async for event in client.api.WatchJob(pb.WatchJobRequest(tenant=tenant, job_id=job_id)):
            if event.WhichOneof("event") == "job" and event.job.finished_at > 0:
                job: pb.Job = event.job
                return job
    raise AssertionError("the watch ended before the job finished")


async def _statuses(db: asyncpg.Connection, job_id: str) -> dict[str, str]:
    rows = await db.fetch("SELECT id, status FROM items WHERE job_id = $1", uuid.UUID(job_id))
    return {str(r["id"]): r["status"] for r in rows}


async def test_a_cancel_taken_by_another_replica_reaches_the_stream_holding_the_items(
    replica_pair: StartPair, database_url: str
) -> None:
    a, b = await replica_pair()
    predictor = FakePredictor(a, accepts_cancels=True)
    db = await asyncpg.connect(database_url)
    try:
        await a.tenant("t", credits=10)
        job = await a.submit("t", 6)
        predictor.ready(4)
        held = await predictor.take(4)

        started = time.monotonic()
        canceled = await b.api.CancelJob(pb.CancelJobRequest(tenant="t", job_id=job.id))
        # CANCELED at once; the items in flight are still in flight, the queued ones are not.
        assert canceled.status == pb.JOB_CANCELED and canceled.finished_at == 0
        assert (canceled.counts.processing, canceled.counts.canceled, canceled.counts.pending) == (4, 2, 0)
        # Replica B took the cancel; the stream is on A, which hears it through PostgreSQL.
        told = await asyncio.wait_for(predictor.canceled.get(), 5)
        assert sorted(told) == sorted(a.item_id for a in held)
        assert time.monotonic() - started < 2
        listed = await b.api.ListJobs(pb.ListJobsRequest(tenant="t", status=pb.JOB_PROCESSING))
        assert not listed.jobs, "a canceled job is not listed as processing while its items end"

        # The provider's answers: three calls canceled, one had already succeeded.
        assert (await predictor.fail(held[:3], "canceled upstream", retryable=False, canceled=True)).accepted
        assert (await predictor.complete(held[3:])).accepted
        final = await _finished(b, "t", job.id)
        assert final.status == pb.JOB_CANCELED
        assert (final.counts.done, final.counts.canceled, final.counts.processing) == (1, 5, 0)
        assert await db.fetchval("SELECT credits FROM tenants WHERE id = 't'") == 10 - 1, "only the DONE one charged"
        kinds = dict(await db.fetch("SELECT kind, count(*) FROM credit_ledger WHERE tenant_id = 't' GROUP BY kind"))
        assert kinds == {"grant": 1, "reserve": 1, "charge": 1, "refund": 5}
        await ledger_reconciles(db)
        await counters_match_items(db)
    finally:
        await db.close()
        await predictor.close()


async def test_a_predictor_that_accepts_cancels_keeps_its_items_and_hears_them_again_at_its_heartbeat(
    client: Client, db: asyncpg.Connection
) -> None:
    # A cancel pushed while the stream was away is not lost: the heartbeat names the items.
    predictor = FakePredictor(client, accepts_cancels=True)
    try:
        await client.tenant("t", credits=5)
        job = await client.submit("t", 2)
        predictor.ready(2)
        held = await predictor.take(2)
        await client.api.CancelJob(pb.CancelJobRequest(tenant="t", job_id=job.id))
        beat = await predictor.heartbeat(held, accepts_cancels=True)
        assert sorted(beat.cancel) == sorted(h.item_id for h in held)
        assert not beat.lost and not beat.canceled
        assert (await predictor.complete(held)).accepted, "the leases are still the holder's"
        assert await db.fetchval("SELECT credits FROM tenants WHERE id = 't'") == 3
        await ledger_reconciles(db)
        await counters_match_items(db)
    finally:
        await predictor.close()


async def test_an_older_predictor_learns_of_the_cancel_at_its_heartbeat_which_ends_the_items(
    client: Client, db: asyncpg.Connection
) -> None:
    predictor = FakePredictor(client)  # no accepts_cancels: nothing is pushed to it
    try:
        await client.tenant("t", credits=5)
        job = await client.submit("t", 2)
        predictor.ready(2)
        held = await predictor.take(2)
        await client.api.CancelJob(pb.CancelJobRequest(tenant="t", job_id=job.id))
        assert predictor.canceled.empty()
        assert (await _job(client, "t", job.id)).counts.processing == 2
        beat = await predictor.heartbeat(held, accepts_cancels=False)
        ids = sorted(h.item_id for h in held)
        # As before: lost and canceled, so it drops them and cancels their calls upstream.
        assert (sorted(beat.lost), sorted(beat.canceled), list(beat.cancel)) == (ids, ids, [])
        assert set((await _statuses(db, job.id)).values()) == {"CANCELED"}
        final = await _job(client, "t", job.id)
        assert final.finished_at > 0 and final.counts.canceled == 2
        assert await db.fetchval("SELECT credits FROM tenants WHERE id = 't'") == 5
        await ledger_reconciles(db)
        await counters_match_items(db)
    finally:
        await predictor.close()


async def test_a_canceled_jobs_items_whose_holder_is_gone_are_canceled_upstream_by_the_next_holder_or_at_once(
    start_scheduler: StartScheduler, database_url: str
) -> None:
    app = await start_scheduler(FAIRWAY_LEASE_SECONDS=0.5)
    client = Client(app)
    gone = FakePredictor(client, "gone", accepts_cancels=True)
    db = await asyncpg.connect(database_url)
    try:
        await client.tenant("t", credits=5)
        job = await client.submit("t", 3)
        gone.ready(2)
        called, never = await gone.take(2)
        accepted = await client.dispatch.RecordUpstream(pb.RecordUpstreamRequest(
            lease=pb.LeaseRef(item_id=called.item_id, lease=called.lease), upstream_id="p-called"))
        assert accepted.accepted
        await client.api.CancelJob(pb.CancelJobRequest(tenant="t", job_id=job.id))
        await gone.close()  # the holder dies before it cancels anything: its leases expire

        # The one whose call reached the provider goes to the next holder, to be canceled there;
        # the one that never did is CANCELED without going anywhere.
        nxt = FakePredictor(client, "next", accepts_cancels=True)
        try:
            nxt.ready(2)
            (again,) = await nxt.take(1)
            assert (again.item_id, again.upstream_id, again.canceled, again.attempt) == (
                called.item_id, "p-called", True, 2)
            assert (await _statuses(db, job.id))[never.item_id] == "CANCELED"
            assert (await nxt.fail([again], "canceled upstream", retryable=False, canceled=True)).accepted
            await asyncio.sleep(0)
            assert nxt.received.empty(), "nothing of a canceled job is dispatched as work"
        finally:
            await nxt.close()
        final = await _job(client, "t", job.id)
        assert final.finished_at > 0 and final.counts.canceled == 3
        assert await db.fetchval("SELECT credits FROM tenants WHERE id = 't'") == 5
        await ledger_reconciles(db)
        await counters_match_items(db)
    finally:
        await db.close()
        await client.close()


async def test_a_providers_word_on_a_canceled_jobs_item_decides_its_end(
    client: Client, predictor: FakePredictor, db: asyncpg.Connection
) -> None:
    # A webhook for a canceled job's item in flight: `canceled` ends it CANCELED and refunded,
    # `succeeded` DONE and charged.
    await client.tenant("t", credits=5)
    job = await client.submit("t", 2)
    predictor.ready(2)
    held = await predictor.take(2)
    for assignment, upstream in zip(held, ("p-canceled", "p-succeeded"), strict=True):
        await client.dispatch.RecordUpstream(pb.RecordUpstreamRequest(
            lease=pb.LeaseRef(item_id=assignment.item_id, lease=assignment.lease), upstream_id=upstream))
    await client.api.CancelJob(pb.CancelJobRequest(tenant="t", job_id=job.id))
    for upstream, status in (("p-canceled", "canceled"), ("p-succeeded", "succeeded")):
        answer = await client.api.ReportUpstreamResult(pb.UpstreamResult(
            provider="replicate", upstream_id=upstream, status=status, output_json='"out"'))
        assert answer.matched
    statuses = await _statuses(db, job.id)
    assert (statuses[held[0].item_id], statuses[held[1].item_id]) == ("CANCELED", "DONE")
    assert await db.fetchval("SELECT credits FROM tenants WHERE id = 't'") == 4
    await ledger_reconciles(db)
    await counters_match_items(db)
