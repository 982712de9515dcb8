"""Group commit: calls that arrive while one is in flight go together in the next one.

A round trip (to PostgreSQL, to Redis) costs far more than the work it carries, so under load
round trips, not the store, would bound a replica. `GroupCommit` runs a call at once when
idle, in the caller's own task (no timer, no extra task: an idle replica adds no delay);
requests that arrive while it is in flight wait and go as one batch of at most `max_batch`
as soon as it returns, and so on. The more concurrent callers, the larger the batches: the
cost per request falls as load rises instead of the queue growing. Batches of one instance
run one at a time, in arrival order, as if the requests had run one after the other.

    completions = GroupCommit(flush_completions, max_batch=500)
    accepted = await completions.submit(completion)
    accepted_all = await completions.submit_many(completions_of_one_rpc)

`flush(requests)` returns one result per request, in order; if it raises, every caller of
that batch gets the exception. A request whose caller gave up (its RPC was cancelled) before
its batch ran is dropped: nobody waits for its result, and it must not take a grant or a row.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

Flush = Callable[[Sequence[T]], Awaitable[Sequence[R]]]
DEFAULT_MAX_BATCH = 500


class GroupCommit(Generic[T, R]):
    """Serialises `flush` per instance; callers that queue up meanwhile share one call."""

    def __init__(self, flush: Flush[T, R], *, max_batch: int = DEFAULT_MAX_BATCH) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._flush = flush
        self._max = max_batch
        self._busy = False
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self.batches = 0  # calls of `flush`, for tests and stats

    async def submit(self, request: T) -> R:
        return (await self.submit_many((request,)))[0]

    async def submit_many(self, requests: Sequence[T]) -> list[R]:
        """Results in the order of `requests`; when idle, the first `max_batch` go in one call now."""
        if not requests:
            return []
        if self._busy:
            return await self._wait_for(self._enqueue(requests))
        self._busy = True
        now = requests[: self._max]
        # The rest queue before the first call, so they go in the very next batch.
        later = self._enqueue(requests[self._max :])
        try:
            self.batches += 1
            results = list(await self._flush(now))
        except BaseException:
            for future in later:
                future.cancel()
            raise
        finally:
            self._hand_over()
        if later:
            results.extend(await self._wait_for(later))
        return results

    def _enqueue(self, requests: Sequence[T]) -> list[asyncio.Future[R]]:
        loop = asyncio.get_running_loop()
        futures = []
        for request in requests:
            future: asyncio.Future[R] = loop.create_future()
            self._waiting.append((request, future))
            futures.append(future)
        return futures

    async def _wait_for(self, futures: list[asyncio.Future[R]]) -> list[R]:
        try:
            return list(await asyncio.gather(*futures))
        except BaseException:
            for future in futures:
                future.cancel()  # the rest of this caller's requests are abandoned too
            raise

    def _hand_over(self) -> None:
        if self._waiting:
            asyncio.get_running_loop().create_task(self._drain())
        else:
            self._busy = False

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch = self._waiting[: self._max]
                del self._waiting[: self._max]
                batch = [(request, future) for request, future in batch if not future.done()]
                if not batch:
                    continue
                self.batches += 1
                try:
                    results = await self._flush([request for request, _ in batch])
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
