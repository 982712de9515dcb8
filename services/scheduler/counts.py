"""Completions into the counters: `count_moves` folded into jobs and queue_counts.

    folder = CountFolder(pool, signals); folder.start(supervisor)
    folder.wake()          # completions committed moves: fold them soon
    await folder.fold()    # fold what there is now (cancel, tests)

A completion takes no counter lock: it records what it finished in `count_moves`, and the
folder adds those moves to the job's and the (lane, tenant)'s counters in batches, finishing
the jobs they complete. Readers add the moves not folded yet, so counts are exact at any
time; a job is marked finished when its last moves are folded, moments after its last
completion commits. See `queries/outcomes.sql` (`fold_count_moves`).
"""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg

from services.common.supervision import BackgroundTask, Supervisor
from services.scheduler.events import JobSignals
from services.scheduler.sql import QUERIES

FOLD_BATCH = 10_000
# A fold is a transaction of its own: after a wake-up, the completions of `delay` seconds go
# into one, so that folding costs a small fraction of the completions' commits. Moves whose
# completer did not fold them (its replica died first) are folded by a sweep every `sweep`.
DELAY_SECONDS = 0.1
SWEEP_SECONDS = 1.0


class CountFolder:
    def __init__(
        self, pool: asyncpg.Pool, signals: JobSignals, *, delay: float = DELAY_SECONDS, sweep: float = SWEEP_SECONDS
    ) -> None:
        self._pool = pool
        self._signals = signals
        self._delay = delay
        self._sweep = sweep
        self._wake = asyncio.Event()
        self._task: BackgroundTask | None = None

    def start(self, supervisor: Supervisor) -> None:
        self._task = supervisor.loop("count-folder", self.fold, wait=self._due)

    async def stop(self) -> None:
        if self._task is not None:
            await self._task.stop()

    def wake(self) -> None:
        self._wake.set()

    async def fold(self) -> int:
        """Fold every move committed now; return how many there were."""
        total = 0
        while True:
            row = await self._pool.fetchrow(QUERIES["fold_count_moves"], FOLD_BATCH)
            assert row is not None
            if row["finished"]:
                self._signals.touch(str(job_id) for job_id in row["finished"])
            total += int(row["folded"])
            if row["folded"] < FOLD_BATCH:
                return total

    async def _due(self) -> None:
        """Completions woke the folder `delay` ago, or the sweep's time came."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self._sweep)
            await asyncio.sleep(self._delay)
        self._wake.clear()
