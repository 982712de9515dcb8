"""Outcomes to the scheduler: one RPC per event-loop turn, retried while it is away."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from fairway.scheduler.v1 import scheduler_pb2 as pb

from services.predictor.reporting import Reporter


def _unavailable() -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata())


class FakeDispatch:
    def __init__(self, failures_first: int = 0) -> None:
        self.completes: list[pb.CompleteRequest] = []
        self.fails: list[pb.FailRequest] = []
        self._failures_first = failures_first

    async def Complete(self, request: pb.CompleteRequest, **_: float) -> pb.OutcomeResponse:
        if self._failures_first:
            self._failures_first -= 1
            raise _unavailable()
        self.completes.append(request)
        return pb.OutcomeResponse(accepted=[c.lease.item_id for c in request.completions])

    async def Fail(self, request: pb.FailRequest, **_: float) -> pb.OutcomeResponse:
        self.fails.append(request)
        return pb.OutcomeResponse(accepted=[f.lease.item_id for f in request.failures])


def _completion(i: int) -> pb.Completion:
    return pb.Completion(lease=pb.LeaseRef(item_id=f"item-{i}", lease=i), output_json="{}")


async def test_outcomes_ready_together_travel_in_one_rpc() -> None:
    dispatch = FakeDispatch()
    reporter = Reporter(dispatch)  # type: ignore[arg-type]
    failure = pb.Failure(lease=pb.LeaseRef(item_id="bad", lease=9), error="nope", retryable=False)
    await asyncio.gather(*(reporter.complete(_completion(i)) for i in range(20)), reporter.fail(failure))
    assert len(dispatch.completes) == 1 and len(dispatch.completes[0].completions) == 20
    assert len(dispatch.fails) == 1 and dispatch.fails[0].failures[0].error == "nope"


async def test_an_unreachable_scheduler_is_retried_until_it_answers() -> None:
    dispatch = FakeDispatch(failures_first=2)
    reporter = Reporter(dispatch)  # type: ignore[arg-type]
    await reporter.complete(_completion(1))
    assert [c.lease.item_id for r in dispatch.completes for c in r.completions] == ["item-1"]


async def test_later_outcomes_go_in_a_later_batch() -> None:
    dispatch = FakeDispatch()
    reporter = Reporter(dispatch)  # type: ignore[arg-type]
    await reporter.complete(_completion(1))
    await reporter.complete(_completion(2))
    sizes: list[Any] = [len(r.completions) for r in dispatch.completes]
    assert sizes == [1, 1]
