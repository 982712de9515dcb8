"""Outcomes back to the scheduler: batched per event-loop turn, retried while it is away.

    reporter = Reporter(dispatch_stub)
    await reporter.complete(pb.Completion(...))     # returns once the scheduler answered

Outcomes that become ready in the same turn of the event loop travel in one RPC, with no
timer: a busy predictor sends few large batches, an idle one sends each at once. The lease
in every outcome fences duplicates, so a retried batch is harmless.
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeAlias

import grpc
from fairway.scheduler.v1 import scheduler_pb2 as pb
from fairway.scheduler.v1 import scheduler_pb2_grpc

from services.common.logging import get_logger

log = get_logger(__name__)
Batch: TypeAlias = list[tuple[Any, "asyncio.Future[None]"]]
MAX_BATCH = 500
GIVE_UP_S = 120.0  # past this the lease has expired anyway; the next holder resumes


class Reporter:
    def __init__(self, dispatch: scheduler_pb2_grpc.DispatchStub) -> None:
        self._dispatch = dispatch
        self._completions: Batch = []
        self._failures: Batch = []
        self._scheduled = False
        self._sending: set[asyncio.Task[None]] = set()

    async def complete(self, completion: pb.Completion) -> None:
        future = asyncio.get_running_loop().create_future()
        self._completions.append((completion, future))
        self._schedule()
        await future

    async def fail(self, failure: pb.Failure) -> None:
        future = asyncio.get_running_loop().create_future()
        self._failures.append((failure, future))
        self._schedule()
        await future

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        completions, self._completions = self._completions, []
        failures, self._failures = self._failures, []
        for start in range(0, len(completions), MAX_BATCH):
            self._send(completions[start : start + MAX_BATCH], failures=False)
        for start in range(0, len(failures), MAX_BATCH):
            self._send(failures[start : start + MAX_BATCH], failures=True)

    def _send(self, batch: Batch, *, failures: bool) -> None:
        task = asyncio.create_task(self._deliver(batch, failures=failures))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _deliver(self, batch: Batch, *, failures: bool) -> None:
        delay = 0.1
        deadline = asyncio.get_running_loop().time() + GIVE_UP_S
        error: BaseException | None = None
        while True:
            try:
                if failures:
                    await self._dispatch.Fail(pb.FailRequest(failures=[f for f, _ in batch]), timeout=10)
                else:
                    await self._dispatch.Complete(pb.CompleteRequest(completions=[c for c, _ in batch]), timeout=10)
                break
            except grpc.aio.AioRpcError as exc:
                retryable = exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                if not retryable or asyncio.get_running_loop().time() + delay > deadline:
                    log.warning("could not report %d outcomes: %s", len(batch), exc.code().name)
                    error = exc
                    break
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        for _, future in batch:
            if not future.done():
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(error)
