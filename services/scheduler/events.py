"""Job events: every item state change, resumable by sequence number.

Each change takes a number from one sequence (`change_seq` of the item row, or of the
lease row when the item is dispatched), so a watcher reads "what changed in this job since
N" from two indexes. Every event carries a resume point: a watch resumed after it misses
no change, and may repeat those of the few seconds before (see `_Cursor`).

Watchers wake when their job changes: at once for changes made by this replica, and by
`NOTIFY fairway_jobs` for changes made by another. `SAFETY_SECONDS` only bounds the wait
should a notification be lost.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable

import asyncpg
from fairway.scheduler.v1 import scheduler_pb2 as pb

from services.common.supervision import Supervisor
from services.scheduler.jobs import Jobs, parse_id, render_item
from services.scheduler.sql import QUERIES

SAFETY_SECONDS = 5.0
JOB_EVENT_SECONDS = 1.0
# A change committed out of number order is delivered within LOOKBACK_SECONDS, provided
# its statement ran for less than SETTLE_SECONDS (scheduler statements take milliseconds).
LOOKBACK_SECONDS = 1.0
SETTLE_SECONDS = 3.0
_PAGE = 500
# Job ids per notification: 200 x 37 characters stays under PostgreSQL's 8000-byte payload.
_IDS_PER_NOTICE = 200
# Changes a watcher remembers above its floor (a lookback re-reads at most these).
_REMEMBERED = 5000


class JobSignals:
    """Wakes the watchers of a job when it changed, on this replica or on another.

    `touch` wakes local watchers at once and announces the change to the other replicas in
    the background (off the caller's path, coalescing what changed meanwhile: the loop
    `start` runs); `heard` is the other end, subscribed to `fairway_jobs`.
    """

    def __init__(self, pool: asyncpg.Pool, replica: str) -> None:
        self._pool = pool
        self._replica = replica
        self._events: dict[str, set[asyncio.Event]] = {}
        self._unannounced: set[str] = set()
        self._changed = asyncio.Event()

    def start(self, supervisor: Supervisor) -> None:
        supervisor.loop("job-announcer", self._announce, wait=self._changed.wait)

    def touch(self, job_ids: Iterable[str]) -> None:
        changed = set(job_ids)
        self._wake(changed)
        if not changed:
            return
        self._unannounced |= changed
        self._changed.set()

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
        """What changed until now; what changes meanwhile sets `_changed` again."""
        self._changed.clear()
        ids, self._unannounced = sorted(self._unannounced), set()
        try:
            for start in range(0, len(ids), _IDS_PER_NOTICE):
                chunk = ",".join(ids[start:start + _IDS_PER_NOTICE])
                await self._pool.execute(QUERIES["notify_job_changes"], f"{self._replica}|{chunk}")
        except Exception:
            # Announced again when the supervisor retries, with what changed meanwhile (a
            # chunk sent twice only wakes watchers twice).
            self._unannounced |= set(ids)
            raise


class _Cursor:
    """Where a watcher is in its job's changes, robust to commits out of number order.

    A change takes its number when its statement runs and becomes visible when it commits,
    so change N may appear after N+1 was read. Reading only past the highest number seen
    would skip it; instead the numbers sent above `floor` are remembered, and every
    `LOOKBACK_SECONDS` (and once the job is terminal) a read starts at `floor`. A number
    read SETTLE_SECONDS before such a read had every lower change committed by then, so
    the floor moves up to it. At most `_REMEMBERED` numbers are kept: the lowest go first,
    as changes still uncommitted are the newest.
    """

    def __init__(self, after_seq: int) -> None:
        self.floor = after_seq  # every change at or below was sent, or was before the watch
        self.top = after_seq  # highest change sent
        self._sent: dict[int, float] = {}  # changes above floor already sent -> when, in order
        self._lookback: float | None = None  # when the current read from the floor began
        self._looked_back = 0.0

    def start(self, now: float, final: bool) -> int:
        """Where the next read begins."""
        if final or (self._sent and now - self._looked_back >= LOOKBACK_SECONDS):
            self._lookback = self._looked_back = now
            return self.floor
        self._lookback = None
        return self.top

    def fresh(self, seq: int, now: float) -> bool:
        """Whether change `seq` is news; it is remembered if so."""
        if seq <= self.floor or seq in self._sent:
            return False
        self._sent[seq] = now
        self.top = max(self.top, seq)
        while len(self._sent) > _REMEMBERED:
            self._forget()
        return True

    def settle(self) -> None:
        """After a read: a read from the floor saw every change below those read long before."""
        if self._lookback is not None:
            while self._sent and self._lookback - next(iter(self._sent.values())) >= SETTLE_SECONDS:
                self._forget()

    def _forget(self) -> None:
        seq = next(iter(self._sent))
        del self._sent[seq]
        self.floor = max(self.floor, seq)

    @property
    def unsettled(self) -> bool:
        return bool(self._sent)


async def watch(
    pool: asyncpg.Pool, jobs: Jobs, signals: JobSignals, tenant: str, job_id: str, after_seq: int
) -> AsyncIterator[pb.JobEvent]:
    """Item events since `after_seq`, a job event at least every second while things
    change, and a final job event when the job is terminal."""
    key = parse_id(job_id, "job")
    # Subscribed before the first read, so no change after that read goes unheard.
    wake = signals.subscribe(str(key))
    loop = asyncio.get_running_loop()
    last_job_event = 0.0
    owed = False  # items changed since the last job event
    cursor = _Cursor(after_seq)
    try:
        while True:
            wake.clear()
            # The job is read before its items: a job seen terminal had every item change
            # committed (the last one finishes the job in the same statement). The first
            # read is also the check that the caller may see the job (NotFound otherwise).
            job = await jobs.get(tenant, job_id)
            terminal = job.finished_at > 0
            if not terminal and job.status == pb.JOB_CANCELED:
                # A reader of events stops at a terminal status (the gateway ends the SSE
                # stream there), and a canceled job's items in flight are still ending as
                # their provider answers the cancel: until the last has, it reads PROCESSING.
                job.status = pb.JOB_PROCESSING
            now = loop.time()
            after = cursor.start(now, final=terminal)
            while True:
                rows = await pool.fetch(QUERIES["items_changed_since"], key, after, job.tenant, _PAGE)
                for row in rows:
                    after = row["change_seq"]
                    if cursor.fresh(after, now):
                        owed = True
                        yield pb.JobEvent(seq=cursor.floor, item=render_item(row))
                if len(rows) < _PAGE:
                    break
            cursor.settle()
            if terminal or last_job_event == 0.0 or (owed and now - last_job_event >= JOB_EVENT_SECONDS):
                last_job_event, owed = now, False
                # Once terminal every change has committed and been read.
                yield pb.JobEvent(seq=cursor.top if terminal else cursor.floor, job=job)
            if terminal:
                return
            # A job event is owed within JOB_EVENT_SECONDS of the last one; a change read
            # recently is looked behind within LOOKBACK_SECONDS.
            timeout = JOB_EVENT_SECONDS - (now - last_job_event) if owed else SAFETY_SECONDS
            if cursor.unsettled:
                timeout = min(timeout, LOOKBACK_SECONDS)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), max(timeout, 0.0))
    finally:
        signals.unsubscribe(str(key), wake)
