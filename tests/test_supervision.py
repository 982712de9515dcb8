"""The supervision of background loops (services/common/supervision.py), on a fake clock, and
the health it feeds (services/common/grpc_server.py's HealthState)."""

from __future__ import annotations

import asyncio

from grpc_health.v1 import health, health_pb2

from services.common.grpc_server import HealthState
from services.common.supervision import Supervisor


class FakeTime:
    """A clock that moves only when the supervisor sleeps its backoff."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


class Script:
    """A loop whose steps fail or succeed as scripted; `wait` takes one tick per round."""

    def __init__(self, outcomes: list[bool], ticks: int) -> None:
        self.outcomes = outcomes
        self.steps = 0
        self.ticks: asyncio.Queue[None] = asyncio.Queue()
        for _ in range(ticks):
            self.ticks.put_nowait(None)
        self.waiting = asyncio.Event()  # set when the loop waits with the script spent

    async def wait(self) -> None:
        if not self.outcomes:
            self.waiting.set()
        await self.ticks.get()

    async def step(self) -> None:
        self.steps += 1
        if not self.outcomes.pop(0):
            raise RuntimeError(f"step {self.steps} failed")


class Reports:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[str, bool]] = asyncio.Queue()

    async def __call__(self, name: str, ok: bool) -> None:
        self.queue.put_nowait((name, ok))

    async def next(self) -> tuple[str, bool]:
        async with asyncio.timeout(5):
            return await self.queue.get()


async def test_a_failing_step_is_retried_with_backoff_and_turns_unhealthy_until_it_succeeds() -> None:
    time, reports = FakeTime(), Reports()
    supervisor = Supervisor(reports, unhealthy_after_s=5.0, clock=time.clock, sleep=time.sleep)
    # Round 1: seven failures, then a success; round 2: one failure, then a success.
    script = Script([False] * 7 + [True] + [False, True], ticks=2)
    task = supervisor.loop("folder", script.step, wait=script.wait)
    try:
        # Failures at 0, 0.1, 0.3, 0.7, 1.5, 3.1 and 5.1 s: the seventh is past 5 s.
        assert await reports.next() == ("folder", False)
        assert not supervisor.healthy
        assert await reports.next() == ("folder", True)
        async with asyncio.timeout(5):
            await script.waiting.wait()
        # Doubling up to the 2 s cap; a success starts again from the first delay.
        assert time.sleeps == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 0.1]
        # A failed step is run again without waiting: two rounds took two ticks.
        assert script.steps == 10 and script.ticks.empty()
        assert supervisor.healthy and task.failures == 0 and reports.queue.empty()
    finally:
        await supervisor.stop()
    assert not task.running


async def test_a_loop_that_ends_unexpectedly_is_unhealthy_for_good() -> None:
    class Fatal(BaseException):
        pass

    async def dies() -> None:
        raise Fatal

    reports = Reports()
    supervisor = Supervisor(reports)
    task = supervisor.loop("dispatch", dies)
    try:
        assert await reports.next() == ("dispatch", False)
        assert not task.running and not supervisor.healthy
    finally:
        await supervisor.stop()
    # Stopped on purpose, it no longer holds the process back.
    assert await reports.next() == ("dispatch", True)


async def test_a_cancelled_error_from_inside_a_step_is_a_failure_and_a_stop_is_not() -> None:
    time, reports = FakeTime(), Reports()
    supervisor = Supervisor(reports, unhealthy_after_s=60.0, clock=time.clock, sleep=time.sleep)
    script = Script([True], ticks=1)

    async def step() -> None:
        if script.steps == 0:
            script.steps += 1
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            future.cancel()
            await future  # someone else's cancel reaches the step
        await script.step()

    task = supervisor.loop("announcer", step, wait=script.wait)
    async with asyncio.timeout(5):
        await script.waiting.wait()
    assert task.running and time.sleeps == [0.1]
    await supervisor.stop()
    assert not task.running and reports.queue.empty()


async def test_health_serves_only_while_every_part_works_and_never_after_draining() -> None:
    servicer = health.aio.HealthServicer()
    state = HealthState(servicer, ["fairway.scheduler.v1.Scheduler"])

    async def status(name: str = "") -> str:
        reply = await servicer.Check(health_pb2.HealthCheckRequest(service=name), None)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    await state.set(True)
    assert await status() == await status("fairway.scheduler.v1.Scheduler") == "SERVING"
    await state.set_part("dispatch", False)
    await state.set_part("resync", False)
    assert await status() == await status("fairway.scheduler.v1.Scheduler") == "NOT_SERVING"
    await state.set_part("dispatch", True)
    assert await status() == "NOT_SERVING" and state.failing == {"resync"}
    await state.set_part("resync", True)
    assert await status() == "SERVING"
    await state.drain()
    await state.set(True)
    await state.set_part("dispatch", True)
    assert await status() == await status("fairway.scheduler.v1.Scheduler") == "NOT_SERVING"
