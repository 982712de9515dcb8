"""Unit tests of a canceled job's call in the predictor, for the orders of events a live stack
reaches only by chance (the end-to-end paths are in tests/e2e/test_cancel_in_flight.py): an
answer that arrives with the cancel wins; a call still waiting is cut off; a Replicate cancel
answered while the prediction still runs is followed by reads until the provider's end."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fairway.scheduler.v1 import scheduler_pb2 as pb

from services.predictor.providers.base import ItemCanceled, unless_canceled
from services.predictor.providers.replicate_recovery import is_intent
from tests.predictor.fakes import Context, prediction, provider

ASSIGNMENT = pb.Assignment(item_id="i1", model="a/b", input_json='{"prompt": "x"}', grant_id="g-dispatch")


async def test_an_answer_that_arrives_with_the_cancel_wins() -> None:
    canceled = asyncio.Event()

    async def call() -> str:
        canceled.set()  # the cancel lands in the same moment as the answer
        return "answer"

    assert await unless_canceled(call(), canceled, "the call") == "answer"


async def test_a_call_still_waiting_is_cut_off_and_a_canceled_one_never_starts() -> None:
    canceled = asyncio.Event()
    cut: list[bool] = []

    async def call() -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cut.append(True)
            raise
        return "answer"

    asyncio.get_running_loop().call_later(0.01, canceled.set)
    with pytest.raises(ItemCanceled) as aborted:
        await unless_canceled(call(), canceled, "the call")
    assert cut == [True] and aborted.value.sent
    with pytest.raises(ItemCanceled) as unsent:
        await unless_canceled(call(), canceled, "the call")
    assert not unsent.value.sent and cut == [True]


@pytest.mark.parametrize(("end", "outcome"), [("canceled", "CANCELED"), ("succeeded", "DONE")])
async def test_a_prediction_still_running_after_its_cancel_is_read_until_it_ends(end: str, outcome: str) -> None:
    sent: list[httpx.Request] = []
    replicate, _ = provider([
        httpx.Response(201, json=prediction("p1")),
        httpx.Response(200, json=prediction("p1", "processing")),  # the cancel's answer
        httpx.Response(200, json=prediction("p1", end)),
    ], sent)
    context = Context()

    def recorded(upstream_id: str) -> bool:
        if not is_intent(upstream_id):
            context.canceled.set()  # the job is canceled as the create's id is recorded
        return True

    context._lease_held = recorded
    if outcome == "CANCELED":
        with pytest.raises(ItemCanceled, match="Replicate canceled prediction p1"):
            await replicate.run(ASSIGNMENT, context.ctx())
    else:
        assert (await replicate.run(ASSIGNMENT, context.ctx())).output == "out-p1"
    assert [f"{r.method} {r.url.path}" for r in sent] == [
        "POST /v1/models/a/b/predictions", "POST /v1/predictions/p1/cancel", "GET /v1/predictions/p1"]
    await replicate.close()


async def test_an_item_canceled_before_its_create_creates_nothing() -> None:
    sent: list[httpx.Request] = []
    replicate, _ = provider([], sent)
    context = Context()
    context.canceled.set()
    with pytest.raises(ItemCanceled) as canceled:
        await replicate.run(ASSIGNMENT, context.ctx())
    assert not canceled.value.sent and not sent and context.released == 1
    await replicate.close()
