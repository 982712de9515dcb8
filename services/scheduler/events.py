"""Job events: every item state change, in order, resumable by sequence number.

Each item change takes a number from one sequence (`items.change_seq`), so a watcher
reads "what changed in this job since N" from an index, and a client that reconnects
with its last seen N misses nothing. Changes made by this replica wake watchers at once;
changes made by another replica are seen within `POLL_SECONDS`.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterable

import asyncpg
from fairway.scheduler.v1 import scheduler_pb2 as pb

from services.scheduler.jobs import Jobs, render_item
from services.scheduler.sql import QUERIES

POLL_SECONDS = 0.5
JOB_EVENT_SECONDS = 1.0
_PAGE = 500


class JobSignals:
    """Wakes the watchers of a job when this replica changed it."""

    def __init__(self) -> None:
        self._events: dict[str, set[asyncio.Event]] = {}

    def touch(self, job_ids: Iterable[str]) -> None:
        for job_id in job_ids:
            for event in self._events.get(job_id, ()):
                event.set()

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
    seq = after_seq
    try:
        while True:
            wake.clear()
            changed = False
            while True:
                rows = await pool.fetch(QUERIES["items_changed_since"], key, seq, _PAGE)
                for row in rows:
                    seq = row["change_seq"]
                    yield pb.JobEvent(seq=seq, item=render_item(row))
                changed = changed or bool(rows)
                if len(rows) < _PAGE:
                    break
            job = await jobs.get(tenant, job_id)
            terminal = job.finished_at > 0
            now = loop.time()
            if terminal or (changed and now - last_job_event >= JOB_EVENT_SECONDS) or last_job_event == 0.0:
                last_job_event = now
                yield pb.JobEvent(seq=seq, job=job)
            if terminal:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), POLL_SECONDS)
    finally:
        signals.unsubscribe(job.id, wake)
