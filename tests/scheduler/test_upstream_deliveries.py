"""A provider's delivery (a webhook) is processed once, however often it is replayed, and a
delivery whose processing failed is processed when the provider sends it again."""

from __future__ import annotations

import asyncpg
import grpc
import pytest
from fairway.scheduler.v1 import scheduler_pb2 as pb

from tests.scheduler.conftest import Client, FakePredictor, counters_match_items


async def in_flight(client: Client, predictor: FakePredictor, upstream_id: str) -> pb.Assignment:
    """An item leased to the predictor, with its upstream call recorded as `upstream_id`."""
    await client.tenant("t")
    await client.submit("t", 1)
    predictor.ready(1)
    (assignment,) = await predictor.take(1)
    recorded = await client.dispatch.RecordUpstream(pb.RecordUpstreamRequest(
        lease=pb.LeaseRef(item_id=assignment.item_id, lease=assignment.lease), upstream_id=upstream_id))
    assert recorded.accepted
    return assignment


def webhook(delivery: str, status: str = "failed", **fields: str) -> pb.UpstreamResult:
    return pb.UpstreamResult(provider="replicate", upstream_id="pred-1", status=status, delivery_id=delivery,
                             **fields)


async def test_a_replayed_delivery_does_nothing(
    client: Client, predictor: FakePredictor, db: asyncpg.Connection
) -> None:
    assignment = await in_flight(client, predictor, "pred-1")
    first = await client.api.ReportUpstreamResult(webhook("msg_1", error="out of memory"))
    assert (first.matched, first.duplicate, first.item_id) == (True, False, assignment.item_id)
    replay = await client.api.ReportUpstreamResult(webhook("msg_1", error="out of memory"))
    assert (replay.matched, replay.duplicate) == (False, True)
    item = await db.fetchrow("SELECT status, error FROM items WHERE id = $1::uuid", assignment.item_id)
    assert (item["status"], item["error"]) == ("FAILED", "out of memory")
    assert await db.fetchval("SELECT count(*) FROM upstream_deliveries") == 1
    # Another delivery about the same prediction is not a replay.
    other = await client.api.ReportUpstreamResult(webhook("msg_2"))
    assert (other.matched, other.duplicate) == (True, False)
    await counters_match_items(db)


async def test_a_delivery_whose_processing_failed_is_processed_when_sent_again(
    client: Client, predictor: FakePredictor, db: asyncpg.Connection
) -> None:
    assignment = await in_flight(client, predictor, "pred-1")
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        # An output PostgreSQL refuses (a NUL): the transaction that recorded the delivery rolls back.
        await client.api.ReportUpstreamResult(webhook("msg_1", "succeeded", output_json='"a\x00"'))
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await db.fetchval("SELECT count(*) FROM upstream_deliveries") == 0
    retried = await client.api.ReportUpstreamResult(webhook("msg_1", "succeeded", output_json='"a"'))
    assert (retried.matched, retried.duplicate) == (True, False)
    item = await db.fetchrow("SELECT status, output FROM items WHERE id = $1::uuid", assignment.item_id)
    assert (item["status"], item["output"]) == ("DONE", '"a"')


async def test_deliveries_are_forgotten_after_the_signatures_window(client: Client, db: asyncpg.Connection) -> None:
    await db.execute(
        "INSERT INTO upstream_deliveries (provider, delivery_id, seen_at) VALUES "
        "('replicate', 'msg_old', now() - interval '12 minutes'), "
        "('replicate', 'msg_older', now() - interval '1 hour'), "
        "('replicate', 'msg_recent', now() - interval '9 minutes')"
    )
    # No item has this upstream id: the delivery is recorded all the same, and does nothing.
    again = await client.api.ReportUpstreamResult(webhook("msg_old"))
    assert (again.matched, again.duplicate) == (False, False)
    recent = await client.api.ReportUpstreamResult(webhook("msg_recent"))
    assert recent.duplicate
    # Recording one drops those past the window.
    kept = await db.fetch("SELECT delivery_id, seen_at > now() - interval '1 minute' AS fresh "
                          "FROM upstream_deliveries ORDER BY 1")
    assert [(r["delivery_id"], r["fresh"]) for r in kept] == [("msg_old", True), ("msg_recent", False)]


async def test_ids_postgresql_cannot_store_are_refused_in_our_words(client: Client) -> None:
    for result, field in (
        (webhook("msg\x00"), "delivery_id"),
        (webhook("m" * 257), "delivery_id"),
        (pb.UpstreamResult(provider="replicate", upstream_id="pred\x00", status="failed"), "upstream_id"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.api.ReportUpstreamResult(result)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (refused.value.details() or "").startswith(f"{field}: "), refused.value.details()
