"""Background loops that outlive their failures, and tell the process's health about them.

A loop is a `wait` (an event, a timer) followed by a `step` (the work). The `Supervisor` runs
each loop as a task: an exception from a step, whatever its type, is logged with its
traceback and the step is tried again after an exponential backoff (reset by a step that
succeeds), without waiting again. A loop whose steps keep failing for `unhealthy_after_s`,
or whose task ends when nobody stopped it, is reported unhealthy (the process turns
NOT_SERVING, and Kubernetes restarts it if that lasts); a step that succeeds again reports it
healthy. A task that ended stays unhealthy: nothing runs it any more. A step should be one
short unit of work (a dispatch round, a fold): a step that loops for long counts as neither a
success nor a failure until it returns.

    supervisor = Supervisor(health.set_part, unhealthy_after_s=30.0)
    folder = supervisor.loop("count-folder", folder.fold, wait=folder.due)
    ...
    await folder.stop()          # one loop, on purpose: its vote on health goes with it
    await supervisor.stop()      # every loop, at shutdown
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from services.common.logging import get_logger

log = get_logger(__name__)

Step = Callable[[], Awaitable[object]]
Report = Callable[[str, bool], Awaitable[None]]
Sleep = Callable[[float], Awaitable[None]]

FIRST_BACKOFF_S = 0.1
# Short enough that a loop serves again within a couple of seconds of its dependency coming
# back (a database restart), long enough that a lasting outage costs a retry every 2 s per loop.
MAX_BACKOFF_S = 2.0
UNHEALTHY_AFTER_S = 30.0


class Backoff:
    """Delays that double from `first_s` up to `max_s`; `reset` starts again from `first_s`."""

    def __init__(self, first_s: float = FIRST_BACKOFF_S, max_s: float = MAX_BACKOFF_S) -> None:
        self._first = first_s
        self._max = max_s
        self._next = first_s

    def next(self) -> float:
        delay, self._next = self._next, min(self._max, self._next * 2)
        return delay

    def reset(self) -> None:
        self._next = self._first


class BackgroundTask:
    """One supervised loop (made by `Supervisor.loop`)."""

    def __init__(self, supervisor: Supervisor, name: str, step: Step, wait: Step | None) -> None:
        self.name = name
        self.failures = 0  # steps failed in a row
        self.failing_since: float | None = None
        self.healthy = True
        self._supervisor = supervisor
        self._step = step
        self._wait = wait
        self._backoff = Backoff(supervisor.first_backoff_s, supervisor.max_backoff_s)
        self._last_error = ""
        self._stopping = False
        self._task = asyncio.get_running_loop().create_task(self._run(), name=name)
        self._task.add_done_callback(self._ended)

    @property
    def running(self) -> bool:
        return not self._task.done()

    async def stop(self) -> None:
        """End the loop on purpose; it no longer counts for the process's health."""
        self._stopping = True
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._supervisor.forget(self)
        if not self.healthy:
            self.healthy = True
            await self._supervisor.report(self.name, True)

    async def _run(self) -> None:
        retrying = False
        while True:
            try:
                if self._wait is not None and not retrying:
                    await self._wait()
                await self._step()
            except (Exception, asyncio.CancelledError) as exc:
                # Only a cancel of this task ends the loop; a CancelledError a step let out
                # (a future someone else canceled) is a failure like any other.
                if isinstance(exc, asyncio.CancelledError) and (self._stopping or _being_canceled()):
                    raise
                delay = self._backoff.next()
                await self._failed(exc, delay)
            else:
                retrying = False
                if self.failures:
                    await self._recovered()
                continue
            retrying = True
            await self._supervisor.sleep(delay)

    async def _failed(self, exc: BaseException, delay: float) -> None:
        now = self._supervisor.clock()
        self.failures += 1
        if self.failing_since is None:
            self.failing_since = now
        failing_for = now - self.failing_since
        error = f"{type(exc).__name__}: {exc}"
        if error != self._last_error:
            # A new kind of failure gets its traceback; the same one again, a line.
            log.error("%s failed; trying again in %.1f s", self.name, delay, exc_info=exc)
            self._last_error = error
        else:
            log.warning("%s failed again (%d in a row, for %.1f s; next try in %.1f s): %s",
                        self.name, self.failures, failing_for, delay, error)
        if self.healthy and failing_for >= self._supervisor.unhealthy_after_s:
            self.healthy = False
            log.error("%s has been failing for %.1f s: unhealthy", self.name, failing_for)
            await self._supervisor.report(self.name, False)

    async def _recovered(self) -> None:
        log.info("%s works again after %d failures", self.name, self.failures)
        self.failures = 0
        self.failing_since = None
        self._last_error = ""
        self._backoff.reset()
        if not self.healthy:
            self.healthy = True
            await self._supervisor.report(self.name, True)

    def _ended(self, task: asyncio.Task[None]) -> None:
        if self._stopping:
            return
        # Only a BaseException other than Exception, or a cancel from outside, gets here.
        error = None if task.cancelled() else task.exception()
        log.error("%s ended and will not run again: unhealthy", self.name, exc_info=error)
        self.healthy = False
        self._supervisor.report_later(self.name, False)


def _being_canceled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class Supervisor:
    """Runs loops as `BackgroundTask`s; `report(name, ok)` hears when one turns (un)healthy."""

    def __init__(
        self, report: Report | None = None, *, unhealthy_after_s: float = UNHEALTHY_AFTER_S,
        first_backoff_s: float = FIRST_BACKOFF_S, max_backoff_s: float = MAX_BACKOFF_S,
        clock: Callable[[], float] = time.monotonic, sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.unhealthy_after_s = unhealthy_after_s
        self.first_backoff_s = first_backoff_s
        self.max_backoff_s = max_backoff_s
        self.clock = clock
        self.sleep = sleep
        self._report = report
        self.tasks: list[BackgroundTask] = []
        self._reporting: set[asyncio.Task[None]] = set()

    def loop(self, name: str, step: Step, *, wait: Step | None = None) -> BackgroundTask:
        """Run `wait` then `step` over and over (`step` alone, without `wait`, after a failure)."""
        task = BackgroundTask(self, name, step, wait)
        self.tasks.append(task)
        return task

    @property
    def healthy(self) -> bool:
        return all(task.healthy for task in self.tasks)

    async def stop(self) -> None:
        for task in list(self.tasks):
            await task.stop()
        await asyncio.gather(*self._reporting, return_exceptions=True)

    def forget(self, task: BackgroundTask) -> None:
        if task in self.tasks:
            self.tasks.remove(task)

    async def report(self, name: str, ok: bool) -> None:
        if self._report is None:
            return
        try:
            await self._report(name, ok)
        except Exception:  # a loop must not die of telling its state
            log.exception("could not report %s as %s", name, "healthy" if ok else "unhealthy")

    def report_later(self, name: str, ok: bool) -> None:
        """From a callback, where nothing can be awaited."""
        task = asyncio.get_running_loop().create_task(self.report(name, ok))
        self._reporting.add(task)
        task.add_done_callback(self._reporting.discard)
