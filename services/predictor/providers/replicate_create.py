"""Creating a Replicate prediction once, and what each answer to the create leads to.

The create is bracketed by an intent (`replicate_recovery`): the item records
`creating:<item>:<time>` as its upstream id before the create, the prediction id after it.
What happens in between depends on what the provider's answer proves:

- 201: the id is recorded before anything waits on it, then the grant is settled;
- 429, or a call that never left (connect error): nothing was created. The create is sent
  again here, in the same attempt and without a search: after the provider's retry-after
  (the 429 reported to the ratelimiter, whose advice `pay` then honours) or a backoff (the
  unused grant released), paid with a new `replicate:create` grant, under a fresh intent
  whose record also proves that the lease is still ours. Before, the 429 sent the item back
  to the scheduler with its intent, so its next holder listed the account's predictions for
  a create that never happened, and every throttled create cost an attempt;
- another 4xx but 408/409/425: the request was refused as a whole; the item fails;
- a timeout or reset after sending, a 5xx, 408/409/425: the prediction may exist. The intent
  stays and the item goes back to the scheduler: its next holder searches (`find_orphan`).

An item whose job was canceled (`ctx.canceled`) creates nothing more: before a create, and
during the wait before one sent again, the cancel ends it (`ItemCanceled`, its grant unused).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from fairway.scheduler.v1 import scheduler_pb2 as pb
from replicate.client import Client as ReplicateClient

from services.common.limits import REPLICATE_CREATE
from services.common.logging import get_logger
from services.predictor.config import PredictorConfig
from services.predictor.errors import (
    REPLICATE_ERRORS,
    RetryableUpstreamError,
    never_sent,
    replicate_error,
    replicate_status,
)
from services.predictor.providers.base import CallContext, CallGate, ItemCanceled, LeaseLost
from services.predictor.providers.replicate_recovery import intent_id
from services.ratelimiter.client import BudgetClient
from services.ratelimiter.errors import RateLimiterError

log = get_logger(__name__)


@dataclass(frozen=True)
class Grant:
    """The `replicate:create` grant a create is paid with: the dispatch's, or one paid here."""

    settle: Callable[[], Awaitable[None]]  # the call reached the provider
    release: Callable[[], Awaitable[None]]  # it never did: the budget gets the call back


def dispatch_grant(ctx: CallContext) -> Grant:
    return Grant(settle=lambda: ctx.settle(0), release=ctx.release)


async def pay(budgets: BudgetClient, budget: str) -> str:
    """Wait until `budget` grants one call, honouring its advice (and its outages); the grant's id."""
    while True:
        try:
            got = await budgets.acquire(budget, 1)
        except RateLimiterError as exc:
            await asyncio.sleep(max(0.2, getattr(exc, "retry_after_s", 0.0) or 0.5))
            continue
        if got.grants:
            return got.grants[0].id
        await asyncio.sleep(max(0.01, got.retry_after_s))


async def report_throttle(budgets: BudgetClient, budget: str, retry_after_s: float) -> None:
    try:
        await budgets.report_upstream(budget, throttled=True, retry_after_s=retry_after_s)
    except RateLimiterError as exc:
        log.warning("could not report a Replicate 429 to the ratelimiter: %s", exc)


class Creator:
    def __init__(
        self, client: ReplicateClient, gate: CallGate, budgets: BudgetClient, config: PredictorConfig,
        webhook: str, cancel: Callable[[str], Awaitable[None]],
    ) -> None:
        self._client = client
        self._gate = gate
        self._budgets = budgets
        self._config = config
        self._webhook = webhook
        self._cancel = cancel

    async def pay_grant(self) -> Grant:
        """A create grant of this adapter's own (a resumed item is dispatched without one)."""
        grant_id = await pay(self._budgets, REPLICATE_CREATE)
        return Grant(settle=lambda: self._settle(grant_id), release=lambda: self._release(grant_id))

    async def create_recorded(self, assignment: pb.Assignment, ctx: CallContext, grant: Grant) -> dict[str, Any]:
        """Create the prediction with its id recorded before anything waits on it."""
        backoff = self._config.poll_initial_seconds
        while True:
            if ctx.canceled.is_set():
                await grant.release()
                raise ItemCanceled("the job was canceled before the item's prediction was created", sent=False)
            if not await ctx.record_upstream(intent_id(assignment.item_id)):
                await grant.release()
                raise LeaseLost(f"item {assignment.item_id} was taken away before its prediction started")
            async with ctx.uninterrupted():
                outcome = await self._try(assignment, ctx, grant, backoff)
            if not isinstance(outcome, float):
                break
            # Outside `uninterrupted`: a cancel or lost lease noticed now ends the item here.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ctx.canceled.wait(), outcome)
            if ctx.canceled.is_set():  # this try's grant is settled or released already
                raise ItemCanceled("the job was canceled before the item's prediction was created", sent=False)
            backoff = min(backoff * 2, self._config.poll_max_seconds)
            grant = await self.pay_grant()
        data, recorded = outcome
        if not recorded:
            # The item was canceled or its lease expired while the create ran; nobody
            # will ever follow this prediction, so stop the paid work at once.
            await self._cancel(data["id"])
            raise LeaseLost(f"item {assignment.item_id} was taken away while its prediction started")
        await ctx.park()
        await grant.settle()  # only now: nothing may delay recording the id
        return data

    async def _try(
        self, assignment: pb.Assignment, ctx: CallContext, grant: Grant, backoff: float,
    ) -> tuple[dict[str, Any], bool] | float:
        """One create and the record of its id: (prediction, recorded); or, when the answer
        proves that nothing was created, the seconds to wait before creating again."""
        try:
            data = await self._create(assignment)
        except REPLICATE_ERRORS as exc:
            error = replicate_error(exc)
            if never_sent(exc):
                await grant.release()
                log.warning("item %s: the create never reached Replicate (%s); again in %.1fs",
                            assignment.item_id, error, backoff)
                return backoff
            if replicate_status(exc) == 429:
                await grant.settle()  # a throttled call still counted upstream
                await report_throttle(self._budgets, REPLICATE_CREATE, error.retry_after_s)
                wait = error.retry_after_s or backoff
                log.info("item %s: create throttled; again in %.1fs", assignment.item_id, wait)
                return float(wait)
            # Refused (permanent), or the prediction may exist (retryable: the intent stays
            # for the next holder's search). Either way the call reached the provider.
            await grant.settle()
            raise error from exc
        try:
            recorded = await ctx.record_upstream(data["id"])
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
            # A resumed item with the same input adopted this prediction first: it is
            # that item's now (so not canceled), and this one creates again.
            await grant.settle()
            raise RetryableUpstreamError(
                f"prediction {data['id']} was taken over by another item with the same input"
            ) from exc
        return data, recorded

    async def _create(self, assignment: pb.Assignment) -> dict[str, Any]:
        params: dict[str, Any] = {"input": json.loads(assignment.input_json)}
        if ":" in assignment.model:
            params["version"] = assignment.model.split(":", 1)[1]
        else:
            params["model"] = assignment.model
        if self._webhook:
            params["webhook"] = self._webhook
            params["webhook_events_filter"] = ["completed"]
        async with self._gate.call("replicate", "create"):
            prediction = await self._client.predictions.async_create(**params)
        return as_dict(prediction)

    async def _settle(self, grant_id: str) -> None:
        try:
            await self._budgets.settle([(grant_id, 0)])
        except RateLimiterError as exc:  # the grant then expires as reserved: safe, not exact
            log.warning("could not settle create grant %s: %s", grant_id, exc)

    async def _release(self, grant_id: str) -> None:
        try:
            await self._budgets.release([grant_id])
        except RateLimiterError as exc:
            log.warning("could not release create grant %s: %s", grant_id, exc)


def as_dict(prediction: Any) -> dict[str, Any]:
    dump = getattr(prediction, "model_dump", None) or prediction.dict
    return dict(dump())
