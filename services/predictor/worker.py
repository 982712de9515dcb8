"""The work loop: take assignments from the scheduler's stream, run them, report back.

Flow control is explicit: the worker tells the scheduler how many more items it can take
(`ready`), once at connect for every free slot and then one per finished item, so no item
waits claimed in a local queue. Leases are kept alive by one batched heartbeat; an item
the scheduler no longer considers ours (canceled, expired) is abandoned at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import AsyncIterator

import grpc
from fairway.scheduler.v1 import scheduler_pb2 as pb
from fairway.scheduler.v1 import scheduler_pb2_grpc

from services.common.grpc_server import CHANNEL_OPTIONS
from services.common.logging import get_logger
from services.predictor.config import PredictorConfig
from services.predictor.errors import UpstreamError
from services.predictor.metrics import CALL_SECONDS, CALLS, IN_FLIGHT
from services.predictor.providers.base import CallContext, Provider
from services.ratelimiter.client import BudgetClient

log = get_logger(__name__)
HEARTBEAT_FRACTION = 1 / 3
STATUS_LOG_SECONDS = 30.0


class Worker:
    def __init__(self, config: PredictorConfig, providers: dict[str, Provider], budgets: BudgetClient) -> None:
        self._config = config
        self._providers = providers
        self._budgets = budgets
        self._channel = grpc.aio.insecure_channel(config.scheduler_addr, options=CHANNEL_OPTIONS)
        self._dispatch = scheduler_pb2_grpc.DispatchStub(self._channel)
        self._tasks: dict[str, tuple[asyncio.Task[None], pb.Assignment]] = {}
        self._signals: asyncio.Queue[pb.WorkerSignal | None] = asyncio.Queue()
        self._draining = False
        self._done_times: deque[float] = deque()
        self._lease_seconds = 30.0

    # ---- lifecycle ----

    async def run(self) -> None:
        """Hold a work stream open (reconnecting with backoff) until `drain` is called."""
        heartbeat = asyncio.create_task(self._heartbeat_forever())
        status = asyncio.create_task(self._status_forever())
        delay = 0.2
        try:
            while not self._draining:
                try:
                    await self._stream()
                    delay = 0.2
                except grpc.aio.AioRpcError as exc:
                    if self._draining:
                        break
                    log.warning("work stream lost (%s); reconnecting in %.1fs", exc.code().name, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
        finally:
            heartbeat.cancel()
            status.cancel()

    async def drain(self, grace_s: float) -> None:
        """Stop taking work; let in-flight items finish within `grace_s`, hand back the rest."""
        self._draining = True
        self._signals.put_nowait(None)
        pending = [task for task, _ in self._tasks.values()]
        if pending:
            log.info("draining %d items for up to %.0fs", len(pending), grace_s)
            await asyncio.wait(pending, timeout=grace_s)
        leftover = list(self._tasks.values())
        for task, _ in leftover:
            task.cancel()
        if leftover:
            failures = [pb.Failure(lease=_lease(a), error="predictor shut down", retryable=True)
                        for _, a in leftover]
            with contextlib.suppress(grpc.aio.AioRpcError):
                await self._dispatch.Fail(pb.FailRequest(failures=failures), timeout=5)
        await self._channel.close()

    # ---- the stream ----

    async def _stream(self) -> None:
        free = self._config.concurrency - len(self._tasks)
        self._signals = asyncio.Queue()
        self._signals.put_nowait(pb.WorkerSignal(hello=pb.WorkerHello(
            worker_id=self._config.worker_id, providers=list(self._providers))))
        if free > 0:
            self._signals.put_nowait(pb.WorkerSignal(ready=free))

        async def outgoing() -> AsyncIterator[pb.WorkerSignal]:
            while (signal := await self._signals.get()) is not None:
                yield signal

        call = self._dispatch.Work(outgoing())
        log.info("work stream open to %s (%d slots)", self._config.scheduler_addr, free)
        async for assignment in call:
            self._start(assignment)

    def _start(self, assignment: pb.Assignment) -> None:
        self._lease_seconds = max(1.0, assignment.lease_expires_at - time.time())
        task = asyncio.create_task(self._work(assignment), name=f"item-{assignment.item_id}")
        self._tasks[assignment.item_id] = (task, assignment)
        IN_FLIGHT.set(len(self._tasks))

    async def _work(self, assignment: pb.Assignment) -> None:
        provider = self._providers.get(assignment.provider)
        started = time.perf_counter()
        outcome = "error"
        try:
            if provider is None:
                raise UpstreamError(f"this predictor cannot call {assignment.provider!r}")
            result = await provider.run(assignment, self._context(assignment))
            await self._report(complete=pb.Completion(
                lease=_lease(assignment), output_json=json.dumps(result.output),
                usage_json=json.dumps(result.usage) if result.usage else ""))
            outcome = "done"
        except UpstreamError as exc:
            outcome = "retry" if exc.retryable else "failed"
            await self._report(fail=pb.Failure(lease=_lease(assignment), error=str(exc),
                                               retryable=exc.retryable, retry_after_s=exc.retry_after_s))
        except asyncio.CancelledError:
            outcome = "abandoned"
            raise
        except Exception as exc:  # a bug or an SDK surprise: fail the item with a readable message
            log.exception("item %s failed unexpectedly", assignment.item_id)
            await self._report(fail=pb.Failure(lease=_lease(assignment), error=f"predictor error: {exc!r}",
                                               retryable=True))
        finally:
            CALLS.labels(assignment.provider, outcome).inc()
            CALL_SECONDS.labels(assignment.provider).observe(time.perf_counter() - started)
            self._tasks.pop(assignment.item_id, None)
            IN_FLIGHT.set(len(self._tasks))
            self._done_times.append(time.monotonic())
            if not self._draining:
                self._signals.put_nowait(pb.WorkerSignal(ready=1))

    def _context(self, assignment: pb.Assignment) -> CallContext:
        async def record_upstream(upstream_id: str) -> bool:
            reply = await self._dispatch.RecordUpstream(
                pb.RecordUpstreamRequest(lease=_lease(assignment), upstream_id=upstream_id), timeout=10)
            return bool(reply.accepted)

        async def settle(used_tokens: int) -> None:
            if assignment.grant_id:
                await self._budgets.settle([(assignment.grant_id, used_tokens)])

        async def release() -> None:
            if assignment.grant_id:
                await self._budgets.release([assignment.grant_id])

        return CallContext(record_upstream=record_upstream, settle=settle, release=release)

    async def _report(self, complete: pb.Completion | None = None, fail: pb.Failure | None = None) -> None:
        """Deliver an outcome, retrying while the scheduler is unreachable (the lease fences duplicates)."""
        delay = 0.1
        for _ in range(50):
            try:
                if complete is not None:
                    await self._dispatch.Complete(pb.CompleteRequest(completions=[complete]), timeout=10)
                elif fail is not None:
                    await self._dispatch.Fail(pb.FailRequest(failures=[fail]), timeout=10)
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    # ---- leases and status ----

    async def _heartbeat_forever(self) -> None:
        while True:
            await asyncio.sleep(self._lease_seconds * HEARTBEAT_FRACTION)
            if not self._tasks:
                continue
            leases = [_lease(a) for _, a in self._tasks.values()]
            try:
                reply = await self._dispatch.Heartbeat(
                    pb.HeartbeatRequest(worker_id=self._config.worker_id, leases=leases), timeout=10)
            except grpc.aio.AioRpcError as exc:
                log.warning("heartbeat failed: %s", exc.code().name)
                continue
            for item_id in reply.lost:
                entry = self._tasks.get(item_id)
                if entry is not None:
                    log.info("item %s is no longer ours; abandoning it", item_id)
                    entry[0].cancel()

    async def _status_forever(self) -> None:
        while True:
            await asyncio.sleep(STATUS_LOG_SECONDS)
            cutoff = time.monotonic() - 60
            while self._done_times and self._done_times[0] < cutoff:
                self._done_times.popleft()
            log.info("in flight %d/%d, done last minute %d", len(self._tasks), self._config.concurrency,
                     len(self._done_times))


def _lease(assignment: pb.Assignment) -> pb.LeaseRef:
    return pb.LeaseRef(item_id=assignment.item_id, lease=assignment.lease)

