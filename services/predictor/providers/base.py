"""The interface every provider adapter implements, and what the worker lends it.

    class MyProvider:
        name = "acme"
        async def run(self, assignment, ctx) -> Result: ...    # one item, start to end
        async def cancel(self, upstream_id) -> None: ...        # stop a call the provider holds
        async def close(self) -> None: ...

When the item's job is canceled, `ctx.canceled` is set while `run` goes on: the adapter
stops its upstream call and lets the provider's answer decide the end. A result the provider
had already produced is returned as usual (the item is DONE, and charged); a call the
provider canceled, or that never reached it, ends in `ItemCanceled` (CANCELED, refunded).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from fairway.scheduler.v1 import scheduler_pb2 as pb

from services.predictor.errors import never_sent, timed_out
from services.predictor.metrics import CALL_SECONDS, CALLS, CALLS_IN_FLIGHT


@dataclass
class Result:
    output: Any
    usage: dict[str, Any] = field(default_factory=dict)


T = TypeVar("T")


class LeaseLost(Exception):
    """The item is no longer ours (canceled, or its lease expired): report nothing."""


class ItemCanceled(Exception):
    """The item's job was canceled and its call ended without a result: the provider
    canceled it, or it never reached the provider. Reported as such: CANCELED, refunded.
    `sent`: the request may have reached the provider (its budget grant was used)."""

    def __init__(self, message: str, *, sent: bool = True) -> None:
        super().__init__(message)
        self.sent = sent


@dataclass
class CallContext:
    """What an adapter may do besides calling its provider."""

    # Persist the provider's id of an accepted call before waiting on it; False: the lease is gone.
    record_upstream: Callable[[str], Awaitable[bool]]
    # The provider holds the call now: the item gives its slot back while it waits.
    park: Callable[[], Awaitable[None]]
    # Settle the dispatch grant with the tokens the call really used.
    settle: Callable[[int], Awaitable[None]]
    # The grant was not used: the call never reached the provider.
    release: Callable[[], Awaitable[None]]
    # While inside, losing the lease does not cut the call off: a create whose answer is
    # dropped would leave a paid call nobody knows of. The adapter cleans up afterwards.
    uninterrupted: Callable[[], AbstractAsyncContextManager[None]]
    # Set when the item's job is canceled (the item stays ours): stop the upstream call and
    # let the provider's answer decide how the item ends.
    canceled: asyncio.Event = field(default_factory=asyncio.Event)


async def unless_canceled(call: Awaitable[T], canceled: asyncio.Event, what: str) -> T:
    """`call`'s result, unless `canceled` is set before it arrives: then the call is cut off
    (its task canceled, so the SDK drops the request) and `ItemCanceled` is raised. A result
    that arrived first wins, even if the cancel came in the same moment."""
    if canceled.is_set():
        if asyncio.iscoroutine(call):
            call.close()
        raise ItemCanceled(f"{what} was not sent: the job was canceled", sent=False)
    task = asyncio.ensure_future(call)
    waiter = asyncio.ensure_future(canceled.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task  # the cut call's cleanup (its connection closed) runs now
    if task.cancelled():
        raise ItemCanceled(f"{what} was aborted before the provider answered: the job was canceled")
    return task.result()


class Provider(Protocol):
    name: str

    async def run(self, assignment: pb.Assignment, ctx: CallContext) -> Result:
        """Make (or resume) the item's upstream call; raise an `UpstreamError` on failure."""
        ...

    async def cancel(self, upstream_id: str) -> None:
        """Best effort: stop a call the provider accepted (the item was canceled)."""
        ...

    async def close(self) -> None: ...


class CallGate:
    """The process-wide bound on upstream HTTP calls in flight, with their metrics."""

    def __init__(self, limit: int) -> None:
        self._slots = asyncio.Semaphore(limit)

    @asynccontextmanager
    async def call(self, provider: str, endpoint: str) -> AsyncIterator[None]:
        async with self._slots:
            CALLS_IN_FLIGHT.inc()
            started = time.perf_counter()
            outcome = "ok"
            try:
                yield
            except BaseException as exc:
                outcome = call_outcome(exc)
                raise
            finally:
                CALLS_IN_FLIGHT.dec()
                CALLS.labels(provider, endpoint, outcome).inc()
                CALL_SECONDS.labels(provider, endpoint).observe(time.perf_counter() - started)


def call_outcome(exc: BaseException) -> str:
    """The `outcome` label of a failed call: canceled, unsent, timeout, 429, 4xx, 5xx or reset."""
    if isinstance(exc, (asyncio.CancelledError, ItemCanceled)):
        return "canceled"
    if never_sent(exc):
        return "unsent"
    if timed_out(exc) or "Timeout" in type(exc).__name__:
        return "timeout"
    status = (getattr(exc, "status_code", None) or getattr(exc, "status", None)
              or getattr(getattr(exc, "response", None), "status_code", None))
    if isinstance(status, int):
        return "429" if status == 429 else f"{status // 100}xx"
    return "reset"
