"""Job events: every item state change, in order, resumable by sequence number.

Each change takes a number from one sequence (`change_seq` of the item row, or of the
lease row when the item is dispatched), so a watcher reads "what changed in this job since
N" from two indexes, and a client that reconnects with its last seen N misses nothing.

Watchers wake when their job changes: at once for changes made by this replica, and by
`NOTIFY fairway_jobs` for changes made by another. `SAFETY_SECONDS` only bounds the wait
should a notification be lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterable

import asyncpg
from fairway.scheduler.v1 import scheduler_pb2 as pb

from services.common.logging import get_logger
from services.scheduler.jobs import Jobs, render_item
from services.scheduler.sql import QUERIES

log = get_logger(__name__)

SAFETY_SECONDS = 5.0
JOB_EVENT_SECONDS = 1.0
_PAGE = 500
# Job ids per notification: 200 x 37 characters stays under PostgreSQL's 8000-byte payload.
_IDS_PER_NOTICE = 200


class JobSignals:
    """Wakes the watchers of a job when it changed, on this replica or on another.

    `touch` wakes local watchers at once and announces the change to the other replicas in
    the background (off the caller's path, coalescing what changed meanwhile); `heard` is
    the other end, subscribed to `fairway_jobs`.
    """

    def __init__(self, pool: asyncpg.Pool, replica: str) -> None:
        self._pool = pool
        self._replica = replica
        self._events: dict[str, set[asyncio.Event]] = {}
        self._unannounced: set[str] = set()
        self._announcer: asyncio.Task[None] | None = None

    def touch(self, job_ids: Iterable[str]) -> None:
        changed = set(job_ids)
        self._wake(changed)
        if not changed:
            return
        self._unannounced |= changed
        if self._announcer is None or self._announcer.done():
            self._announcer = asyncio.get_running_loop().create_task(self._announce())

    def heard(self, payload: str) -> None:
        replica, _, ids = payload.partition("|")
        if replica != self._replica:
            self._wake(ids.split(","))

    def wake_all(self) -> None:
        """Notifications may have been lost: every watcher reads again."""
        self._wake(list(self._events))

    def subscribe(self, job_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self._events.setdefault(job_id, set()).add(event)
        return event

    def unsubscribe(self, job_id: str, event: asyncio.Event) -> None:
        watchers = self._events.get(job_id)
        if watchers is not None:
            watchers.discard(event)
            if not watchers:
                del self._events[job_id]

    def _wake(self, job_ids: Iterable[str]) -> None:
        for job_id in job_ids:
            for event in self._events.get(job_id, ()):
                event.set()

    async def _announce(self) -> None:
        while self._unannounced:
            ids, self._unannounced = sorted(self._unannounced), set()
            try:
                for start in range(0, len(ids), _IDS_PER_NOTICE):
                    chunk = ",".join(ids[start:start + _IDS_PER_NOTICE])
                    await self._pool.execute(QUERIES["notify_job_changes"], f"{self._replica}|{chunk}")
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                # Watchers elsewhere read again within SAFETY_SECONDS.
                log.warning("job changes not announced: %s", exc)


async def watch(
    pool: asyncpg.Pool, jobs: Jobs, signals: JobSignals, tenant: str, job_id: str, after_seq: int
) -> AsyncIterator[pb.JobEvent]:
    """Item events since `after_seq`, a job event at least every second while things
    change, and a final job event when the job is terminal."""
    job = await jobs.get(tenant, job_id)  # 404 unless visible to the caller
    key = uuid.UUID(job.id)
    wake = signals.subscribe(job.id)
    loop = asyncio.get_running_loop()
    last_job_event = 0.0
    owed = False  # items changed since the last job event
    seq = after_seq
    try:
        while True:
            wake.clear()
            while True:
                rows = await pool.fetch(QUERIES["items_changed_since"], key, seq, job.tenant, _PAGE)
                for row in rows:
                    seq = row["change_seq"]
                    yield pb.JobEvent(seq=seq, item=render_item(row))
                owed = owed or bool(rows)
                if len(rows) < _PAGE:
                    break
            job = await jobs.get(tenant, job_id)
            terminal = job.finished_at > 0
            now = loop.time()
            if terminal or last_job_event == 0.0 or (owed and now - last_job_event >= JOB_EVENT_SECONDS):
                last_job_event, owed = now, False
                yield pb.JobEvent(seq=seq, job=job)
            if terminal:
                return
            # A job event is owed within JOB_EVENT_SECONDS of the last one.
            timeout = JOB_EVENT_SECONDS - (now - last_job_event) if owed else SAFETY_SECONDS
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout)
    finally:
        signals.unsubscribe(job.id, wake)
