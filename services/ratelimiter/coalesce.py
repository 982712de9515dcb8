"""Group commit: calls that arrive while one is in flight go together in the next one.

A Redis round trip costs far more in redis-py and the kernel than the decision does in Lua,
so under load the round trips, not Redis, would bound a replica. `GroupCommit` runs the
first call at once (an idle replica adds no delay: there is no timer); calls that arrive
while it is in flight wait in a queue and are sent as one batch as soon as it returns,
and so on. The more concurrent calls, the larger the batches: the cost per call falls as
load rises instead of the queue growing.

One `GroupCommit` per budget: a batch then touches one hash slot, and order within a
budget is arrival order, as if the calls had run one after the other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

MAX_ITEMS = 256  # per batch: bounds one script's run time, which blocks Redis


class GroupCommit(Generic[Item, Result]):
    """Serialises `run` per instance; callers that queue up meanwhile share one call.

    `run(items)` must return one result per item, in order. If it raises, every caller of
    that batch gets the exception.
    """

    def __init__(self, run: Callable[[Sequence[Item]], Awaitable[Sequence[Result]]]) -> None:
        self._run = run
        self._busy = False
        self._waiting: list[tuple[Item, asyncio.Future[Result]]] = []
        self.batches = 0  # calls of `run`, for tests and stats

    async def submit(self, item: Item) -> Result:
        if self._busy:
            future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
            self._waiting.append((item, future))
            return await future
        # Idle: run this item now, in the caller's task (no extra task, no future).
        self._busy = True
        try:
            self.batches += 1
            return (await self._run((item,)))[0]
        finally:
            self._hand_over()

    def _hand_over(self) -> None:
        if self._waiting:
            asyncio.get_running_loop().create_task(self._drain())
        else:
            self._busy = False

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch = self._waiting[:MAX_ITEMS]
                del self._waiting[:MAX_ITEMS]
                # A caller that gave up (its RPC was cancelled) must not take budget.
                batch = [(item, future) for item, future in batch if not future.done()]
                if not batch:
                    continue
                self.batches += 1
                try:
                    results = await self._run([item for item, _ in batch])
                except BaseException as exc:
                    for _, future in batch:
                        if future.done():
                            pass
                        elif isinstance(exc, Exception):
                            future.set_exception(exc)
                        else:
                            future.cancel()
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._busy = False
            # Cancelled mid-batch (shutdown): nobody is left to serve the rest.
            for _, future in self._waiting:
                if not future.done():
                    future.cancel()
            self._waiting.clear()
