"""`--watch`: a progress bar per job, fed by its event stream, then a summary and the exit code.

    async with Watch(api) as watch:
        watch.add(job)                 # as soon as it is submitted; more may follow
        finals = await watch.wait()
    code = summarize(finals)
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.text import Text

from services.console import output
from services.console.api import Api, Exit
from services.console.events import TERMINAL, follow

SHOWN_FAILURES = 5


@dataclass
class Outcome:
    """A watched job as it ended: its last document and the first few failed items."""

    job: dict[str, Any]
    seconds: float
    failures: list[tuple[str, str]] = field(default_factory=list)


def finished(job: dict[str, Any]) -> int:
    return sum(int(job["counts"].get(name, 0)) for name in TERMINAL)


class Watch:
    def __init__(self, api: Api) -> None:
        self._api = api
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[counts]}"),
            TimeElapsedColumn(), console=output.out,
        )
        self._runs: list[asyncio.Task[Outcome]] = []
        self.job_ids: list[str] = []

    async def __aenter__(self) -> Watch:
        self._progress.start()
        return self

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        for run in self._runs:
            run.cancel()
        self._progress.stop()
        if isinstance(e, asyncio.CancelledError | KeyboardInterrupt) and self.job_ids:
            goes_on = "the job goes on" if len(self.job_ids) == 1 else "the jobs go on"
            output.err.print(f"stopped watching; {goes_on}: " +
                             "; ".join(f"fairway job {job_id} --watch" for job_id in self.job_ids))

    def say(self, message: str | Text) -> None:
        """A line above the bars."""
        self._progress.console.print(message)

    def add(self, job: dict[str, Any]) -> None:
        task = self._progress.add_task(
            f"{job['id'][:8]} {job['model']}", total=job["items_total"] or None, completed=finished(job),
            counts=output.counts(job),
        )
        self.job_ids.append(job["id"])
        self._runs.append(asyncio.create_task(self._follow(job, task)))

    async def wait(self) -> list[Outcome]:
        return list(await asyncio.gather(*self._runs))

    async def _follow(self, job: dict[str, Any], task: TaskID) -> Outcome:
        started = time.monotonic()
        failures: list[tuple[str, str]] = []
        last = job
        if job["status"] not in TERMINAL:
            async for name, data in follow(self._api, job["id"], on_gap=lambda why: self.say(Text(why, style="dim"))):
                if name == "item":
                    if data.get("status") == "FAILED" and len(failures) < SHOWN_FAILURES:
                        failures.append((data.get("ref") or data["id"], data.get("error") or "no error given"))
                    continue
                last = data
                self._progress.update(task, completed=finished(data), total=data["items_total"] or None,
                                      counts=output.counts(data))
        elapsed = output.seconds_between(last.get("created_at"), last.get("finished_at"))
        return Outcome(last, elapsed if elapsed is not None else time.monotonic() - started, failures)


def summarize(outcomes: list[Outcome]) -> Exit:
    """One line per job (and a total for several), the first failures; the exit code they make."""
    totals = {"DONE": 0, "FAILED": 0, "CANCELED": 0}
    for outcome in outcomes:
        job = outcome.job
        for name in totals:
            totals[name] += int(job["counts"].get(name, 0))
        output.out.print(Text.assemble(f"job {job['id']} ", output.status(job["status"]), ": ",
                                       _tally(job["counts"], outcome.seconds)))
        for ref, why in outcome.failures:
            output.out.print(Text.assemble("  failed ", (ref, "bold"), f": {output.shown(why, 160)}"))
    if len(outcomes) > 1:
        seconds = max(o.seconds for o in outcomes)
        output.out.print(Text.assemble(f"{len(outcomes)} jobs: ", _tally(totals, seconds)))
    if totals["FAILED"]:
        return Exit.ITEMS_FAILED
    return Exit.ITEMS_CANCELED if totals["CANCELED"] else Exit.OK


def _tally(counts: dict[str, Any], seconds: float) -> Text:
    done, failed, canceled = (int(counts.get(name, 0)) for name in ("DONE", "FAILED", "CANCELED"))
    rate = (done + failed + canceled) / seconds if seconds > 0 else 0.0
    return Text.assemble(
        (f"{done:,} done", "green"), ", ", (f"{failed:,} failed", "red" if failed else ""), ", ",
        (f"{canceled:,} canceled", "yellow" if canceled else ""),
        f" in {output.duration(seconds)} ({rate:,.1f} items/s)",
    )
