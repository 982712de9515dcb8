"""The work loop: take assignments from the scheduler's stream, run them, report back.

Flow control is explicit: the worker tells the scheduler how many more items it can take
(`ready`), once at connect for every free slot and then one per slot given back, so no
item waits claimed in a local queue. A slot is given back when an item ends, or earlier
when the provider has accepted its call and the item only waits for the result ("parked"):
waiting costs a timer, not a slot. Leases of every held item, parked or not, are kept alive
by one batched heartbeat; an item the scheduler no longer considers ours is abandoned at
once, and if it was canceled its upstream call is canceled too.

A canceled job's items stay ours: the scheduler pushes their ids on the work stream (or, if
that was missed, names them in a heartbeat's answer), and the adapter stops each upstream
call at once; the provider's answer decides how the item ends (`providers/base.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import grpc
from fairway.scheduler.v1 import scheduler_pb2 as pb
from fairway.scheduler.v1 import scheduler_pb2_grpc

from services.common.auth import service_channel
from services.common.logging import get_logger
from services.predictor.config import PredictorConfig
from services.predictor.errors import UpstreamError
from services.predictor.metrics import IN_FLIGHT, ITEM_SECONDS, ITEMS, PARKED
from services.predictor.providers.base import CallContext, ItemCanceled, LeaseLost, Provider
from services.predictor.reporting import Reporter
from services.predictor.status import StatusLog
from services.ratelimiter.client import BudgetClient
from services.ratelimiter.errors import RateLimiterError

log = get_logger(__name__)
HEARTBEAT_FRACTION = 1 / 3
# Canceled ids heard for items not held (yet): a cancel heard through another replica can
# overtake its item's assignment. The newest this many are remembered.
EARLY_CANCELS = 10_000
_PROVIDERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "providers") + os.sep


@dataclass(eq=False)
class Held:
    """One item this predictor holds a lease on."""

    assignment: pb.Assignment
    task: asyncio.Task[None] | None = None
    holds_slot: bool = True
    upstream_id: str = ""
    uninterrupted: bool = False
    lost: bool = False  # the lease is gone (noticed while the call could not be cut off)
    canceled: bool = False
    # The item's job was canceled; the item is still ours (the adapter ends its call).
    cancel_requested: asyncio.Event = field(default_factory=asyncio.Event)


class WorkLoop:
    """The predictor's side of the `Work` stream: `run` until `drain`."""

    def __init__(self, config: PredictorConfig, providers: dict[str, Provider], budgets: BudgetClient) -> None:
        self._config = config
        self._providers = providers
        self._budgets = budgets
        self._channel = service_channel(config.scheduler_addr, config.service_token.get_secret_value())
        self._dispatch = scheduler_pb2_grpc.DispatchStub(self._channel)
        self._reporter = Reporter(self._dispatch)
        self._held: dict[str, Held] = {}
        self._slots_used = 0
        self._parked = 0
        self._signals: asyncio.Queue[pb.WorkerSignal | None] = asyncio.Queue()
        self._draining = False
        self._lease_seconds = 30.0
        self._next_beat = math.inf  # monotonic time of the next heartbeat
        self._beat_sooner = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        self._early_cancels: OrderedDict[str, bool] = OrderedDict()
        self.status = StatusLog(config, budgets)

    # ---- lifecycle ----

    async def run(self) -> None:
        """Hold a work stream open (reconnecting with backoff) until `drain` is called."""
        heartbeat = asyncio.create_task(self._heartbeat_forever())
        status = asyncio.create_task(self.status.run(self._counts))
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
        """Stop taking work; let held items finish within `grace_s`, hand back the rest."""
        self._draining = True
        self._signals.put_nowait(None)
        pending = [h.task for h in self._held.values() if h.task is not None]
        if pending:
            log.info("draining %d items (%d parked) for up to %.0fs", len(pending), self._parked, grace_s)
            heartbeat = asyncio.create_task(self._heartbeat_forever())
            await asyncio.wait(pending, timeout=grace_s)
            heartbeat.cancel()
        leftover = list(self._held.values())
        for held in leftover:
            if held.task is not None:
                held.task.cancel()
        if leftover:
            # A parked item keeps its recorded upstream id: the next holder resumes it.
            failures = [pb.Failure(lease=_lease(h.assignment), error="predictor shut down", retryable=True)
                        for h in leftover]
            log.info("handing back %d items", len(failures))
            ITEMS.labels("any", "handed_back").inc(len(failures))
            try:
                await self._dispatch.Fail(pb.FailRequest(failures=failures), timeout=5)
            except grpc.aio.AioRpcError as exc:
                log.warning("hand-back failed (%s); the leases will expire instead", exc.code().name)
        if self._background:
            await asyncio.wait(self._background, timeout=5)
        await self._channel.close()

    def _counts(self) -> tuple[int, int]:
        return self._slots_used, self._parked

    # ---- the stream ----

    async def _stream(self) -> None:
        free = self._config.concurrency - self._slots_used
        self._signals = asyncio.Queue()
        self._signals.put_nowait(pb.WorkerSignal(hello=pb.WorkerHello(
            worker_id=self._config.worker_id, providers=list(self._providers), accepts_cancels=True)))
        if free > 0:
            self._signals.put_nowait(pb.WorkerSignal(ready=free))

        async def outgoing() -> AsyncIterator[pb.WorkerSignal]:
            while (signal := await self._signals.get()) is not None:
                yield signal

        call = self._dispatch.Work(outgoing())
        log.info("work stream open to %s (%d slots free)", self._config.scheduler_addr, free)
        async for message in call:
            if message.item_id:
                self._start(message)
            self._cancel_requested(message.canceled_item_ids)

    def _start(self, assignment: pb.Assignment) -> None:
        if assignment.lease_seconds > 0:
            self._lease_seconds = max(1.0, assignment.lease_seconds)
        else:
            # A scheduler of the previous release sends only its wall clock's expiry: the one
            # estimate left, for the length of a rollout (remove with lease_expires_at).
            self._lease_seconds = max(1.0, assignment.lease_expires_at - time.time())
        due = time.monotonic() + self._lease_seconds * HEARTBEAT_FRACTION
        if due < self._next_beat:
            # The beat was planned for a longer lease (the first assignment's is learned only
            # now): an item that waits longer than its lease, say for a throttled create's
            # retry-after, would lose it before the beat. Beat in time for this one.
            self._next_beat = due
            self._beat_sooner.set()
        held = Held(assignment)
        if assignment.canceled or self._early_cancels.pop(assignment.item_id, False):
            held.cancel_requested.set()
        self._held[assignment.item_id] = held
        self._slots_used += 1
        IN_FLIGHT.set(self._slots_used)
        held.task = asyncio.create_task(self._work(held), name=f"item-{assignment.item_id}")

    def _give_slot_back(self, held: Held) -> None:
        if not held.holds_slot:
            return
        held.holds_slot = False
        self._slots_used -= 1
        IN_FLIGHT.set(self._slots_used)
        if not self._draining:
            self._signals.put_nowait(pb.WorkerSignal(ready=1))

    async def _work(self, held: Held) -> None:
        assignment = held.assignment
        provider = self._providers.get(assignment.provider)
        started = time.perf_counter()
        outcome = "error"
        try:
            if provider is None:
                raise UpstreamError(f"this predictor cannot call {assignment.provider!r}")
            result = await provider.run(assignment, self._context(held))
            outcome = "done"
            self.status.done()
            await self._reporter.complete(pb.Completion(
                lease=_lease(assignment), output_json=json.dumps(result.output),
                usage_json=json.dumps(result.usage, separators=(",", ":")) if result.usage else ""))
        except LeaseLost:
            outcome = "lost"
        except ItemCanceled as exc:
            outcome = "canceled"
            await self._reporter.fail(pb.Failure(lease=_lease(assignment), error=str(exc), canceled=True))
        except UpstreamError as exc:
            outcome = "retry" if exc.retryable else "failed"
            await self._reporter.fail(pb.Failure(lease=_lease(assignment), error=str(exc),
                                                 retryable=exc.retryable, retry_after_s=exc.retry_after_s))
        except asyncio.CancelledError:
            outcome = "lost"
            raise
        except grpc.aio.AioRpcError as exc:
            log.warning("item %s: the scheduler did not take its outcome (%s)", assignment.item_id, exc.code().name)
        except Exception as exc:
            # A bug or an SDK surprise, not a verdict on the item: it goes back to the scheduler
            # (backoff, a new attempt) with a message that says what broke where.
            error = f"unexpected {type(exc).__name__} in {adapter_step(exc)}: {exc}; retried"
            log.exception("item %s: %s", assignment.item_id, error)
            await self._reporter.fail(pb.Failure(lease=_lease(assignment), error=error, retryable=True))
        finally:
            ITEMS.labels(assignment.provider, outcome).inc()
            ITEM_SECONDS.labels(assignment.provider).observe(time.perf_counter() - started)
            self._held.pop(assignment.item_id, None)
            if not held.holds_slot:
                self._parked -= 1
                PARKED.set(self._parked)
            self._give_slot_back(held)

    def _context(self, held: Held) -> CallContext:
        assignment = held.assignment

        async def record_upstream(upstream_id: str) -> bool:
            delay = 0.1
            for _ in range(8):
                try:
                    reply = await self._dispatch.RecordUpstream(
                        pb.RecordUpstreamRequest(lease=_lease(assignment), upstream_id=upstream_id), timeout=10)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                        raise
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                if reply.accepted:
                    held.upstream_id = upstream_id
                return bool(reply.accepted)
            return False

        async def park() -> None:
            if held.lost:
                # Lost while the create could not be cut off: act on it now.
                self._abandon(held)
                raise LeaseLost(f"item {assignment.item_id} is no longer ours")
            if held.holds_slot and self._parked < self._config.max_parked:
                self._parked += 1
                PARKED.set(self._parked)
                self._give_slot_back(held)

        async def settle(used_tokens: int) -> None:
            if assignment.grant_id:
                try:
                    await self._budgets.settle([(assignment.grant_id, used_tokens)])
                except RateLimiterError as exc:  # the grant then expires as reserved: safe, not exact
                    log.warning("could not settle grant of item %s: %s", assignment.item_id, exc)

        async def release() -> None:
            if assignment.grant_id:
                try:
                    await self._budgets.release([assignment.grant_id])
                except RateLimiterError as exc:
                    log.warning("could not release grant of item %s: %s", assignment.item_id, exc)

        @asynccontextmanager
        async def uninterrupted() -> AsyncIterator[None]:
            held.uninterrupted = True
            try:
                yield
            finally:
                held.uninterrupted = False

        return CallContext(record_upstream=record_upstream, park=park, settle=settle, release=release,
                           uninterrupted=uninterrupted, canceled=held.cancel_requested)

    # ---- leases ----

    async def _heartbeat_forever(self) -> None:
        while True:
            self._next_beat = time.monotonic() + self._lease_seconds * HEARTBEAT_FRACTION
            while (wait_s := self._next_beat - time.monotonic()) > 0:
                self._beat_sooner.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._beat_sooner.wait(), wait_s)
            if not self._held:
                continue
            leases = [_lease(h.assignment) for h in self._held.values()]
            try:
                reply = await self._dispatch.Heartbeat(pb.HeartbeatRequest(
                    worker_id=self._config.worker_id, leases=leases, accepts_cancels=True), timeout=10)
            except grpc.aio.AioRpcError as exc:
                log.warning("heartbeat failed: %s", exc.code().name)
                continue
            canceled = set(reply.canceled)
            for item_id in reply.lost:
                held = self._held.get(item_id)
                if held is None or held.lost:
                    continue
                held.lost = True
                held.canceled = item_id in canceled
                if held.uninterrupted:
                    continue  # the provider finishes the call it cannot cut off, then sees the loss
                self._abandon(held)
            self._cancel_requested(reply.cancel)  # pushed cancels this stream missed

    def _cancel_requested(self, item_ids: Iterable[str]) -> None:
        """These items' jobs were canceled: each held one's adapter stops its upstream call
        and reports how it ended. An id not held may belong to an assignment still on its way."""
        for item_id in item_ids:
            held = self._held.get(item_id)
            if held is None:
                self._early_cancels[item_id] = True
                if len(self._early_cancels) > EARLY_CANCELS:
                    self._early_cancels.popitem(last=False)
            elif not held.cancel_requested.is_set():
                log.info("item %s: its job was canceled; canceling its upstream call", item_id)
                held.cancel_requested.set()

    def _abandon(self, held: Held) -> None:
        """Stop working on an item that is no longer ours; cancel its upstream call if it was canceled.

        An expired lease leaves the upstream call running: the next holder resumes it."""
        if held.task is not None and held.task is not asyncio.current_task():
            held.task.cancel()
        provider = self._providers.get(held.assignment.provider)
        if held.canceled and held.upstream_id and provider is not None:
            task = asyncio.create_task(provider.cancel(held.upstream_id))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        log.info("item %s is no longer ours (%s)", held.assignment.item_id,
                 "canceled" if held.canceled else "lease lost")


def adapter_step(exc: BaseException) -> str:
    """Where `exc` came from: the innermost adapter function it passed through, e.g.
    `ReplicateProvider._read (replicate_provider.py:180)`, else the innermost function."""
    adapter = innermost = None
    tb = exc.__traceback__
    while tb is not None:
        innermost = tb
        if tb.tb_frame.f_code.co_filename.startswith(_PROVIDERS):
            adapter = tb
        tb = tb.tb_next
    chosen = adapter or innermost
    if chosen is None:
        return "the predictor"
    code = chosen.tb_frame.f_code
    return f"{code.co_qualname} ({os.path.basename(code.co_filename)}:{chosen.tb_lineno})"


def _lease(assignment: pb.Assignment) -> pb.LeaseRef:
    return pb.LeaseRef(item_id=assignment.item_id, lease=assignment.lease)
