"""What happens to a leased item: heartbeats, completion, failure and retry, expiry, cancel.

Every change is fenced by the lease: only the current holder of a PROCESSING item can
move it, so an item completes once however many predictors once held it. That holds for a
canceled job's items in flight too: they keep their leases until their holders say how the
upstream call ended (docs/design/scheduler.md, "Cancel").
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg
from fairway.scheduler.v1 import scheduler_pb2 as pb

from services.common.group_commit import GroupCommit
from services.common.logging import get_logger
from services.common.supervision import Supervisor
from services.scheduler.cancels import CancelNotices
from services.scheduler.config import SchedulerConfig
from services.scheduler.counts import CountFolder
from services.scheduler.dispatcher import Dispatcher
from services.scheduler.errors import InvalidRequest, UpstreamTaken
from services.scheduler.events import JobSignals
from services.scheduler.jobs import Jobs
from services.scheduler.metrics import OUTCOMES
from services.scheduler.sql import QUERIES

log = get_logger(__name__)
_DEADLOCK_RETRIES = 3


class Outcomes:
    def __init__(
        self, pool: asyncpg.Pool, dispatcher: Dispatcher, signals: JobSignals, jobs: Jobs,
        config: SchedulerConfig, cancels: CancelNotices,
    ) -> None:
        self._pool = pool
        self._dispatcher = dispatcher
        self._signals = signals
        self._jobs = jobs
        self._config = config
        self._cancels = cancels
        self.counts = CountFolder(pool, signals, delay=config.fold_delay_seconds, sweep=config.fold_sweep_seconds)
        self._completions = GroupCommit(self._flush_completions, max_batch=500)
        self._failures = GroupCommit(self._flush_failures, max_batch=500)

    def start(self, supervisor: Supervisor) -> None:
        self._dispatcher.on_hand_back = self.hand_back
        supervisor.loop("lease-reaper", self._reap, wait=self._reap_due)
        self.counts.start(supervisor)

    # ---- completion ----

    async def complete(self, completions: Sequence[pb.Completion]) -> pb.OutcomeResponse:
        accepted = await self._completions.submit_many(completions)
        return _answer([c.lease.item_id for c in completions], accepted)

    async def _flush_completions(self, batch: Sequence[pb.Completion]) -> list[bool]:
        rows = await self._moving(
            (), QUERIES["complete_items"],
            [uuid.UUID(c.lease.item_id) for c in batch], [c.lease.lease for c in batch],
            [c.output_json for c in batch], [c.usage_json or None for c in batch],
        )
        OUTCOMES.labels("done").inc(len(rows))
        self._after(rows)
        if rows:
            self.counts.wake()
        done = {str(r["id"]) for r in rows}
        return [c.lease.item_id in done for c in batch]

    # ---- failure and retry ----

    async def fail(self, failures: Sequence[pb.Failure]) -> pb.OutcomeResponse:
        accepted = await self._failures.submit_many(failures)
        return _answer([f.lease.item_id for f in failures], accepted)

    async def _flush_failures(self, batch: Sequence[pb.Failure]) -> list[bool]:
        rows = await self._apply_failures(
            [uuid.UUID(f.lease.item_id) for f in batch], [f.lease.lease for f in batch],
            [f.error[:4000] for f in batch], [f.retryable for f in batch],
            [f.retry_after_s for f in batch], backoff=True, canceled=[f.canceled for f in batch],
        )
        failed = {str(r["id"]) for r in rows}
        return [f.lease.item_id in failed for f in batch]

    async def _apply_failures(
        self, ids: list[uuid.UUID], leases: list[int], errors: list[str], retry: list[bool],
        retry_after: list[float], *, backoff: bool, counted: bool = True, canceled: list[bool] | None = None,
    ) -> list[Any]:
        """Fail, retry or (an item of a canceled job) cancel leased items. `counted` False:
        the attempt does not count (the item never reached a predictor). `canceled`: the
        holder says the provider canceled the call, or it never reached the provider."""
        base = self._config.retry_base_seconds if backoff else 0.0
        rows = await self._moving(
            ("lock_tenants_of_items", "lock_counts_of_items"), QUERIES["fail_items"],
            ids, leases, errors, retry, retry_after,
            self._config.max_attempts, base, self._config.retry_max_seconds, [counted] * len(ids),
            canceled or [False] * len(ids),
        )
        for row in rows:
            if row["status"] == "PENDING":
                OUTCOMES.labels("retry").inc()
                self._dispatcher.add_backlog_later(row["delay_s"], row["lane"], row["tenant_id"], 1)
            else:
                OUTCOMES.labels(row["status"].lower()).inc()
        self._after(rows)
        return list(rows)

    # ---- leases ----

    async def heartbeat(self, leases: Sequence[pb.LeaseRef], *, accepts_cancels: bool = False) -> pb.HeartbeatResponse:
        rows = await self._pool.fetch(
            QUERIES["heartbeat"], [uuid.UUID(r.item_id) for r in leases], [r.lease for r in leases],
            self._config.lease_seconds,
        )
        held = {str(r["id"]) for r in rows}
        lost = [r.item_id for r in leases if r.item_id not in held]
        # Which of the lost were canceled: the holder cancels those upstream, while an
        # expired lease's upstream call is left running for the next holder to resume.
        gone = await self._pool.fetch(QUERIES["canceled_items"], [uuid.UUID(i) for i in lost]) if lost else []
        canceled = [str(r["id"]) for r in gone]
        of_canceled_jobs = [r for r in rows if r["canceled"]]
        if accepts_cancels or not of_canceled_jobs:
            # Held items of canceled jobs stay held: the predictor missed their pushed cancel.
            return pb.HeartbeatResponse(lost=lost, canceled=canceled, cancel=[str(r["id"]) for r in of_canceled_jobs])
        # A predictor that reports no upstream cancel learns of it here, as it always did: it
        # drops the item and cancels its call, reporting nothing, so the item ends CANCELED now.
        ended = await self._apply_failures(
            [r["id"] for r in of_canceled_jobs], [r["lease"] for r in of_canceled_jobs],
            ["canceled: the job was canceled"] * len(of_canceled_jobs), [False] * len(of_canceled_jobs),
            [0.0] * len(of_canceled_jobs), backoff=False, canceled=[True] * len(of_canceled_jobs),
        )
        ended_ids = [str(r["id"]) for r in ended]
        return pb.HeartbeatResponse(lost=lost + ended_ids, canceled=canceled + ended_ids)

    async def hand_back(self, leases: Sequence[pb.LeaseRef]) -> None:
        """Items claimed for a predictor that never received them: PENDING again, no attempt lost."""
        await self._apply_failures(
            [uuid.UUID(r.item_id) for r in leases], [r.lease for r in leases],
            ["not delivered to a predictor"] * len(leases), [True] * len(leases), [0.0] * len(leases),
            backoff=False, counted=False,
        )

    async def record_upstream(self, lease: pb.LeaseRef, upstream_id: str) -> bool:
        """False if the lease is gone. A call another item recorded first is `UpstreamTaken`:
        a resumed item adopting an orphaned prediction by its input can take the prediction
        of an item with the same input before that item records it."""
        try:
            row = await self._pool.fetchval(QUERIES["record_upstream"], uuid.UUID(lease.item_id), lease.lease,
                                            upstream_id)
        except asyncpg.UniqueViolationError:
            raise UpstreamTaken(f"upstream_id: {upstream_id} is recorded for another item") from None
        return row is not None

    async def reap_expired(self) -> int:
        rows = await self._pool.fetch(QUERIES["expired_leases"], 1000)
        if not rows:
            return 0
        log.info("%d leases expired; handing their items back", len(rows))
        await self._apply_failures(
            [r["id"] for r in rows], [r["lease"] for r in rows],
            ["lease expired: the predictor stopped answering"] * len(rows),
            [True] * len(rows), [0.0] * len(rows), backoff=False,
        )
        return len(rows)

    async def _reap_due(self) -> None:
        await asyncio.sleep(max(0.1, self._config.lease_seconds / 3))

    async def _reap(self) -> None:
        while await self.reap_expired() >= 1000:
            pass

    # ---- cancel and upstream results ----

    async def cancel(self, tenant: str, job_id: str) -> pb.Job:
        """Cancel a job: the items that never reached the provider at once; the holders of
        those in flight are told at once, on whichever replica holds their streams, and keep
        them until they report how the upstream call ended."""
        job = await self._jobs.get(tenant, job_id)
        key = uuid.UUID(job.id)
        rows: list[Any] = []
        in_flight: list[str] = []
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(QUERIES["lock_tenant_of_job"], key)
            await conn.execute(QUERIES["lock_counts_of_job"], key)
            marked = await conn.fetchrow(QUERIES["mark_job_canceled"], key, tenant)
            if marked is not None:
                # Statements of their own, so that the next ones see what a claim holding the
                # cursor or a retry leased before it let go.
                await conn.execute(QUERIES["close_job_cursor"], key)
                await conn.execute(QUERIES["lock_job_retries"], key)
                rows = await conn.fetch(QUERIES["cancel_items"], key, marked["tenant_id"], marked["lane"])
                leased = await conn.fetch(QUERIES["job_leases"], key, marked["tenant_id"])
                in_flight = [str(r["item_id"]) for r in leased]
                await self._cancels.announce(conn, in_flight)
        for row in rows:
            self._dispatcher.remove_backlog(row["lane"], row["tenant_id"], 1)
        self._cancels.tell(in_flight)
        # Completions of the job not folded yet: the job is finished once they are.
        await self.counts.fold()
        self._signals.touch([job.id])
        return await self._jobs.get(tenant, job_id)

    async def upstream_result(self, result: pb.UpstreamResult) -> pb.UpstreamResultResponse:
        """A provider's word on an upstream call. A delivery with an id is recorded in the
        transaction that applies it: a replay finds it and does nothing (`duplicate`), and a
        delivery whose processing failed is not recorded, so the provider's retry is processed."""
        _storable_id("upstream_id", result.upstream_id)
        delivery = result.delivery_id if result.HasField("delivery_id") else None
        if delivery is not None:
            _storable_id("delivery_id", delivery)
        for attempt in range(_DEADLOCK_RETRIES):
            try:
                async with self._pool.acquire() as conn, conn.transaction():
                    if delivery is not None and not await conn.fetchval(
                        QUERIES["remember_delivery"], result.provider, delivery, DELIVERY_MEMORY_S
                    ):
                        return pb.UpstreamResultResponse(duplicate=True)
                    row = await conn.fetchrow(QUERIES["item_by_upstream"], result.upstream_id)
                    if row is None:
                        return pb.UpstreamResultResponse(matched=False)
                    moved = await self._apply_upstream(conn, row, result)
                break
            except asyncpg.DeadlockDetectedError:
                if attempt == _DEADLOCK_RETRIES - 1:
                    raise
                log.warning("deadlock applying an upstream result; running it again")
        for row in moved:
            OUTCOMES.labels("done" if result.status == "succeeded" else row["status"].lower()).inc()
        self._after(moved)
        if moved and result.status == "succeeded":
            self.counts.wake()
        return pb.UpstreamResultResponse(matched=True, item_id=str(row["id"]))

    async def _apply_upstream(self, conn: asyncpg.Connection, row: Any, result: pb.UpstreamResult) -> list[Any]:
        """Complete or fail the item the result is about, fenced by its lease, in `conn`'s
        transaction; the rows moved. An item not in flight (finished, or waiting for another
        attempt) is left as it is."""
        if row["lease"] is None:
            return []
        ids, leases = [row["id"]], [row["lease"]]
        if result.status == "succeeded":
            return list(await conn.fetch(QUERIES["complete_items"], ids, leases, [result.output_json or "null"],
                                         [result.usage_json or None]))
        if result.status not in ("failed", "canceled"):
            return []
        for lock in ("lock_tenants_of_items", "lock_counts_of_items"):
            await conn.execute(QUERIES[lock], ids)
        error = (result.error or f"prediction {result.status}")[:4000]
        # Canceled by the provider: CANCELED if the item's job was canceled, else FAILED.
        return list(await conn.fetch(
            QUERIES["fail_items"], ids, leases, [error], [False], [0.0], self._config.max_attempts,
            self._config.retry_base_seconds, self._config.retry_max_seconds, [True], [result.status == "canceled"],
        ))

    async def _moving(self, locks: Sequence[str], query: str, ids: list[uuid.UUID], *args: Any) -> list[Any]:
        """Run a statement that moves items, after taking its row locks in the global order
        (see queries/outcomes.sql). A deadlock would be a bug in that order, or two completions of
        the same items at once; should one happen, only one transaction is aborted, and it simply
        runs again."""
        for attempt in range(_DEADLOCK_RETRIES):
            try:
                if not locks:  # a statement that needs no lock first (complete_items)
                    return list(await self._pool.fetch(query, ids, *args))
                async with self._pool.acquire() as conn, conn.transaction():
                    for lock in locks:
                        await conn.execute(QUERIES[lock], ids)
                    return list(await conn.fetch(query, ids, *args))
            except asyncpg.DeadlockDetectedError:
                if attempt == _DEADLOCK_RETRIES - 1:
                    raise
                log.warning("deadlock moving items; running the statement again")
        raise AssertionError("unreachable")

    def _after(self, rows: Sequence[Any]) -> None:
        """Bookkeeping after items left PROCESSING: slots and watchers. (A failure or cancel
        that finished a job's last item marked the job finished; a completion's counts are
        folded by `counts`, which marks it then.)"""
        for row in rows:
            self._dispatcher.finished(row["tenant_id"])
        self._signals.touch({str(row["job_id"]) for row in rows})


def _answer(ids: Sequence[str], accepted: Sequence[bool]) -> pb.OutcomeResponse:
    return pb.OutcomeResponse(
        accepted=[i for i, ok in zip(ids, accepted, strict=True) if ok],
        refused=[i for i, ok in zip(ids, accepted, strict=True) if not ok],
    )


# How long a delivery is remembered: a webhook signature verifies from 5 minutes before its
# timestamp to 5 minutes after, so a replay may come 10 minutes after the first delivery;
# one more minute for the clocks of the gateways' hosts and the database's to disagree.
DELIVERY_MEMORY_S = 11 * 60.0
MAX_ID_CHARS = 256


def _storable_id(field: str, value: str) -> None:
    """Refused in our words, before PostgreSQL refuses it in its own."""
    if "\x00" in value or not 0 < len(value) <= MAX_ID_CHARS:
        raise InvalidRequest(f"{field}: must be 1 to {MAX_ID_CHARS} characters, without NUL")

