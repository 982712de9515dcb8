"""The `fairway.scheduler.v1.Dispatch` service: the predictors' side."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TypeAlias

import grpc
from fairway.scheduler.v1 import scheduler_pb2 as pb
from fairway.scheduler.v1 import scheduler_pb2_grpc

from services.common.logging import get_logger
from services.scheduler.dispatcher import Dispatcher
from services.scheduler.errors import InvalidRequest
from services.scheduler.outcomes import Outcomes
from services.scheduler.predictors import PredictorStream

log = get_logger(__name__)
Ctx: TypeAlias = grpc.aio.ServicerContext


class DispatchServicer(scheduler_pb2_grpc.DispatchServicer):
    def __init__(self, dispatcher: Dispatcher, outcomes: Outcomes) -> None:
        self._dispatcher = dispatcher
        self._outcomes = outcomes

    async def Work(self, signals: AsyncIterator[pb.WorkerSignal], context: Ctx) -> AsyncIterator[pb.Assignment]:
        first = await anext(aiter(signals), None)
        if first is None or first.WhichOneof("signal") != "hello":
            raise InvalidRequest("a work stream starts with a hello")
        worker = PredictorStream(name=first.hello.worker_id, providers=frozenset(first.hello.providers),
                                 accepts_cancels=first.hello.accepts_cancels)
        registry = self._dispatcher.predictors
        registry.add(worker)
        log.info("worker %s connected", worker.name)

        async def read_signals() -> None:
            async for signal in signals:
                if signal.WhichOneof("signal") == "ready":
                    worker.slots += signal.ready
                    self._dispatcher.wake()

        reader = asyncio.create_task(read_signals())
        getter: asyncio.Future[pb.Assignment] | None = None
        try:
            while True:
                getter = asyncio.ensure_future(worker.outbox.get())
                done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    assignment, getter = getter.result(), None
                    yield assignment
                    continue
                break  # the worker closed its side
        finally:
            reader.cancel()
            # The stream ended (the worker closed it, or the call was canceled when it died)
            # while a get waited: stop it, or put back what it took, so it is handed back below.
            if getter is not None:
                getter.cancel()
                if getter.done() and not getter.cancelled():
                    worker.outbox.put_nowait(getter.result())
            unsent = registry.remove(worker)
            if unsent:
                await self._dispatcher.hand_back(
                    [pb.LeaseRef(item_id=a.item_id, lease=a.lease) for a in unsent]
                )
            log.info("worker %s disconnected (%d undelivered handed back)", worker.name, len(unsent))

    async def Heartbeat(self, request: pb.HeartbeatRequest, context: Ctx) -> pb.HeartbeatResponse:
        return await self._outcomes.heartbeat(request.leases, accepts_cancels=request.accepts_cancels)

    async def RecordUpstream(self, request: pb.RecordUpstreamRequest, context: Ctx) -> pb.RecordUpstreamResponse:
        return pb.RecordUpstreamResponse(
            accepted=await self._outcomes.record_upstream(request.lease, request.upstream_id)
        )

    async def Complete(self, request: pb.CompleteRequest, context: Ctx) -> pb.OutcomeResponse:
        return await self._outcomes.complete(request.completions)

    async def Fail(self, request: pb.FailRequest, context: Ctx) -> pb.OutcomeResponse:
        return await self._outcomes.fail(request.failures)
