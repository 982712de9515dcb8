"""Group commit: concurrent callers share one database round trip.

While one flush runs, new requests wait; the next flush takes all of them at once. Under
light load every request is flushed alone and at once (no timer adds latency); under heavy
load batches grow to `max_batch` by themselves.

    completions = GroupCommit(flush_completions, max_batch=500)
    accepted = await completions.submit(completion)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    def __init__(
        self, flush: Callable[[Sequence[T]], Awaitable[Sequence[R]]], *, max_batch: int = 500
    ) -> None:
        self._flush = flush
        self._max = max_batch
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._runner: asyncio.Task[None] | None = None

    async def submit(self, request: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((request, future))
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run())
        return await future

    async def submit_many(self, requests: Sequence[T]) -> list[R]:
        return list(await asyncio.gather(*(self.submit(r) for r in requests)))

    async def _run(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[: self._max], self._pending[self._max :]
            try:
                results = await self._flush([request for request, _ in batch])
            except Exception as exc:  # every waiter of this batch sees the failure
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
