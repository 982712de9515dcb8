"""The group-commit primitive (services/common/group_commit.py): batching, order, failures,
callers that give up, and `submit_many`."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from services.common.group_commit import GroupCommit


class Gate:
    """A `flush` that holds each batch until released, and records them."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.open = asyncio.Event()
        self.fail: BaseException | None = None

    async def flush(self, items: Sequence[int]) -> list[int]:
        self.batches.append(list(items))
        await self.open.wait()
        if self.fail is not None:
            raise self.fail
        return [i * 10 for i in items]


async def test_an_idle_call_runs_at_once_in_the_callers_task() -> None:
    seen: list[asyncio.Task[object] | None] = []

    async def flush(items: Sequence[int]) -> list[int]:
        seen.append(asyncio.current_task())
        return list(items)

    queue: GroupCommit[int, int] = GroupCommit(flush)
    assert await queue.submit(3) == 3
    assert seen == [asyncio.current_task()]
    assert queue.batches == 1


async def test_arrivals_during_a_call_go_together_in_the_next() -> None:
    gate = Gate()
    queue: GroupCommit[int, int] = GroupCommit(gate.flush)
    calls = [asyncio.create_task(queue.submit(i)) for i in range(5)]
    await asyncio.sleep(0)
    gate.open.set()
    assert await asyncio.gather(*calls) == [0, 10, 20, 30, 40]
    assert gate.batches == [[0], [1, 2, 3, 4]]
    assert await queue.submit(7) == 70  # idle again: runs at once
    assert queue.batches == 3


async def test_batches_are_bounded_by_max_batch() -> None:
    gate = Gate()
    queue: GroupCommit[int, int] = GroupCommit(gate.flush, max_batch=2)
    calls = [asyncio.create_task(queue.submit(i)) for i in range(6)]
    await asyncio.sleep(0)
    gate.open.set()
    assert await asyncio.gather(*calls) == [0, 10, 20, 30, 40, 50]
    assert gate.batches == [[0], [1, 2], [3, 4], [5]]


async def test_a_failure_reaches_every_caller_of_the_batch_and_no_other() -> None:
    gate = Gate()
    queue: GroupCommit[int, int] = GroupCommit(gate.flush)
    gate.fail = ConnectionError("down")
    calls = [asyncio.create_task(queue.submit(i)) for i in range(4)]
    await asyncio.sleep(0)
    gate.open.set()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    gate.fail = None
    assert await queue.submit(1) == 10


async def test_callers_that_gave_up_are_dropped_from_their_batch() -> None:
    gate = Gate()
    queue: GroupCommit[int, int] = GroupCommit(gate.flush)
    first = asyncio.create_task(queue.submit(0))
    await asyncio.sleep(0)
    gone = asyncio.create_task(queue.submit(1))
    kept = asyncio.create_task(queue.submit(2))
    await asyncio.sleep(0)
    gone.cancel()
    gate.open.set()
    assert await first == 0 and await kept == 20
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert gate.batches == [[0], [2]]


async def test_submit_many_when_idle_is_one_call() -> None:
    gate = Gate()
    gate.open.set()
    queue: GroupCommit[int, int] = GroupCommit(gate.flush, max_batch=3)
    assert await queue.submit_many([1, 2, 3, 4, 5]) == [10, 20, 30, 40, 50]
    assert gate.batches == [[1, 2, 3], [4, 5]]
    assert await queue.submit_many([]) == []


async def test_submit_many_while_busy_shares_the_next_batch() -> None:
    gate = Gate()
    queue: GroupCommit[int, int] = GroupCommit(gate.flush)
    first = asyncio.create_task(queue.submit(0))
    await asyncio.sleep(0)
    many = asyncio.create_task(queue.submit_many([1, 2]))
    one = asyncio.create_task(queue.submit(3))
    await asyncio.sleep(0)
    gate.open.set()
    assert await first == 0 and await many == [10, 20] and await one == 30
    assert gate.batches == [[0], [1, 2, 3]]


async def test_a_flush_that_returns_at_once_leaves_nothing_behind() -> None:
    async def flush(items: Sequence[int]) -> list[int]:
        return list(items)

    queue: GroupCommit[int, int] = GroupCommit(flush, max_batch=2)
    assert await asyncio.wait_for(queue.submit_many([1, 2, 3, 4, 5]), 1.0) == [1, 2, 3, 4, 5]
    assert await asyncio.wait_for(queue.submit(6), 1.0) == 6


async def test_a_cancelled_drain_cancels_the_callers_left() -> None:
    gate = Gate()
    queue: GroupCommit[int, int] = GroupCommit(gate.flush)
    first = asyncio.create_task(queue.submit(0))
    await asyncio.sleep(0)
    waiting = [asyncio.create_task(queue.submit(i)) for i in (1, 2)]
    await asyncio.sleep(0)
    gate.fail = asyncio.CancelledError()
    gate.open.set()
    with pytest.raises(asyncio.CancelledError):
        await first
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    gate.fail = None
    assert await queue.submit(5) == 50  # usable again


def test_max_batch_must_be_positive() -> None:
    with pytest.raises(ValueError):
        GroupCommit(Gate().flush, max_batch=0)
