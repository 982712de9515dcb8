"""Unit tests of the work loop alone (its scheduler is a stand-in): what it reports when an
adapter meets something it did not expect, and how long it takes its leases to last."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from fairway.scheduler.v1 import scheduler_pb2 as pb

from services.predictor.config import PredictorConfig
from services.predictor.reporting import Reporter
from services.predictor.work_loop import WorkLoop
from tests.predictor.fakes import provider
from tests.support.tokens import service_env


class Dispatch:
    """The scheduler: every upstream id recorded, failures kept."""

    def __init__(self) -> None:
        self.fails: list[pb.FailRequest] = []

    async def RecordUpstream(self, request: pb.RecordUpstreamRequest, **_: Any) -> pb.RecordUpstreamResponse:
        return pb.RecordUpstreamResponse(accepted=True)

    async def Fail(self, request: pb.FailRequest, **_: Any) -> pb.OutcomeResponse:
        self.fails.append(request)
        return pb.OutcomeResponse(accepted=[f.lease.item_id for f in request.failures])


async def test_an_adapter_surprise_is_retried_with_a_message_naming_it_and_its_step() -> None:
    # A create answered without a prediction id: the SDK's model of the answer refuses it.
    sent: list[httpx.Request] = []
    replicate, budgets = provider([httpx.Response(201, json={"status": "starting"})], sent)
    worker = WorkLoop(PredictorConfig.model_validate(service_env("predictor")), {"replicate": replicate}, budgets)
    dispatch = Dispatch()
    worker._dispatch = dispatch  # type: ignore[assignment]
    worker._reporter = Reporter(dispatch)  # type: ignore[arg-type]
    worker._start(pb.Assignment(item_id="i1", lease=1, provider="replicate", model="a/b", input_json="{}",
                                lease_expires_at=time.time() + 30))
    task = worker._held["i1"].task
    assert task is not None
    await asyncio.wait_for(task, 5)

    [failure] = [f for request in dispatch.fails for f in request.failures]
    assert failure.retryable, "a surprise is no verdict on the item"
    assert failure.error.startswith(
        "unexpected ValidationError in Creator._create (replicate_create.py:"), failure.error
    assert failure.error.endswith("; retried")
    await replicate.close()
    await worker._channel.close()


async def test_the_lease_length_is_the_duration_the_scheduler_sent_not_a_clock_difference() -> None:
    # The scheduler's wall clock says the lease ends in 1000 s; the lease lasts 12 s. Only the
    # duration counts: the two hosts' clocks need not agree.
    replicate, budgets = provider([], [])
    worker = WorkLoop(PredictorConfig.model_validate(service_env("predictor")), {}, budgets)
    dispatch = Dispatch()
    worker._dispatch = dispatch  # type: ignore[assignment]
    worker._reporter = Reporter(dispatch)  # type: ignore[arg-type]
    worker._start(pb.Assignment(item_id="i1", lease=1, provider="replicate", lease_seconds=12.0,
                                lease_expires_at=time.time() + 1000))
    assert worker._lease_seconds == 12.0
    task = worker._held["i1"].task
    assert task is not None
    await asyncio.wait_for(task, 5)
    await replicate.close()
    await worker._channel.close()
