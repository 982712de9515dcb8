"""Replicate: create a prediction once, persist its id, then learn how it ended.

The create never waits for the result (no `Prefer: wait`): the prediction id must be
recorded with the scheduler before anything waits on it, and a create that blocks until
the end would hold the only copy of that id in a process that may die. So a predictor
that dies mid-way is followed by one that resumes the same prediction instead of paying
for a second one. Once the id is recorded the item gives its slot back ("parks").

How the end is learned:
- with `FAIRWAY_PUBLIC_URL`, from the provider's signed webhook at the gateway, which
  completes the item; this worker learns it from its heartbeat. A safety read after
  `FAIRWAY_WEBHOOK_SAFETY_SECONDS` ends the item if the webhook was lost;
- otherwise from reads timed by the model's observed run times (`RunTimes`), each paid
  from the `replicate:read` budget.

A read answered 404 means the provider no longer knows the prediction (it forgot it across
a restart of its own): the item creates it again (`replicate_create`, paying a create grant)
instead of failing. What each answer to the create leads to is in `replicate_create`.

When the item's job is canceled (`ctx.canceled`), the wait ends at once and the prediction is
canceled upstream (`POST …/cancel`, paid from the read budget); the provider's answer decides
the item's end: `canceled` ends it CANCELED, `succeeded` DONE with its output (the provider
had finished it, and charged for it). An item resumed only to be canceled (a previous holder
recorded the prediction) sends that cancel instead of its first read; one whose prediction
was never created ends CANCELED without creating it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import grpc
import httpx
from fairway.scheduler.v1 import scheduler_pb2 as pb
from replicate.client import Client as ReplicateClient
from replicate.pagination import Page
from replicate.prediction import Prediction

from services.common.limits import REPLICATE_READ
from services.common.logging import get_logger
from services.predictor.config import PredictorConfig
from services.predictor.errors import (
    REPLICATE_ERRORS,
    PermanentUpstreamError,
    RetryableUpstreamError,
    UpstreamError,
    replicate_error,
    replicate_status,
)
from services.predictor.metrics import READS_PER_ITEM, RECREATED
from services.predictor.providers.base import CallContext, CallGate, ItemCanceled, Result
from services.predictor.providers.replicate_create import (
    Creator,
    Grant,
    as_dict,
    dispatch_grant,
    pay,
    report_throttle,
)
from services.predictor.providers.replicate_recovery import find_orphan, is_intent
from services.predictor.providers.run_times import RunTimes
from services.ratelimiter.client import BudgetClient

log = get_logger(__name__)
T = TypeVar("T")
TERMINAL = ("succeeded", "failed", "canceled")
CANCEL_SECONDS = 60.0
DEFAULT_BASE_URL = "https://api.replicate.com"
# Predictions one run may create again after 404s on reads; past it the provider is not
# forgetting a prediction but failing, and the item goes back to the scheduler.
MAX_RECREATES = 2


class _Client(ReplicateClient):
    """The official client on an HTTP client of our own.

    The SDK wraps its default transport in a `RetryTransport` that retries reads on 429
    and 5xx by itself; every call Fairway makes must be paid from a budget and backed
    off by us, so the SDK gets a plain `httpx.AsyncClient` instead.
    """

    def __init__(self, http: httpx.AsyncClient) -> None:
        super().__init__()
        self._http = http

    @property
    def _async_client(self) -> httpx.AsyncClient:
        return self._http


class ReplicateProvider:
    name = "replicate"

    def __init__(
        self, config: PredictorConfig, budgets: BudgetClient, gate: CallGate, http: httpx.AsyncClient | None = None,
    ) -> None:
        self._http = http or httpx.AsyncClient(
            base_url=config.replicate_base_url or DEFAULT_BASE_URL,
            headers={"Authorization": f"Bearer {config.replicate_api_token}", "User-Agent": "fairway-predictor"},
            timeout=httpx.Timeout(config.request_timeout_seconds, connect=5.0),
            limits=httpx.Limits(max_connections=config.concurrency, max_keepalive_connections=config.concurrency),
        )
        self._client = _Client(self._http)
        self._budgets = budgets
        self._gate = gate
        self._config = config
        self._webhook = f"{config.public_url.rstrip('/')}/v1/webhooks/replicate" if config.public_url else ""
        self._creator = Creator(self._client, gate, budgets, config, self._webhook, self.cancel)
        self.run_times = RunTimes(
            hit_ratio=config.replicate_read_hit_ratio, first_s=config.poll_initial_seconds,
            max_s=config.poll_max_seconds,
        )

    async def run(self, assignment: pb.Assignment, ctx: CallContext) -> Result:
        model = assignment.model
        upstream_id = assignment.upstream_id
        reads = 0
        data: dict[str, Any] | None = None
        grant = dispatch_grant(ctx)
        cancel_sent = False
        if upstream_id and not is_intent(upstream_id):
            # Resumed after a crash or hand-back: look once at once, since a webhook that
            # arrived while nobody held the item was dropped. Resumed to be canceled: the
            # cancel's answer is that look.
            await ctx.park()
            cancel_sent = ctx.canceled.is_set()
            data = await (self._canceled({"id": upstream_id}) if cancel_sent else self._read(upstream_id))
            reads += 1
            if data is None:
                if ctx.canceled.is_set():
                    raise ItemCanceled(f"Replicate no longer knows prediction {upstream_id}; not created again")
                grant = await self._forgotten(assignment, upstream_id, "resume")
        elif upstream_id:
            # The previous holder died around its create: adopt what it created, if anything.
            data = await find_orphan(self._list_page, assignment, lambda pid: self._adopt(ctx, pid))
            if data is None:
                if ctx.canceled.is_set():
                    raise ItemCanceled("no prediction was created for the item before its job was canceled",
                                       sent=False)
                grant = await self._creator.pay_grant()  # a resumed item comes without a create grant
            else:
                log.info("item %s: adopted prediction %s", assignment.item_id, data["id"])
                await ctx.park()
        if data is None:
            data = await self._creator.create_recorded(assignment, ctx, grant)
            started = time.monotonic()
        else:
            started = time.monotonic() - max(0.0, time.time() - _timestamp(data.get("created_at")))
        recreated = 0
        while data["status"] not in TERMINAL:
            if ctx.canceled.is_set() and not cancel_sent:
                cancel_sent = True
                answer = await self._canceled(data)
                if answer is None:
                    raise ItemCanceled(f"Replicate no longer knows prediction {data['id']}; not created again")
                data = answer
                continue
            await self._wait(self._next_read(model, time.monotonic() - started), None if cancel_sent else ctx.canceled)
            if ctx.canceled.is_set() and not cancel_sent:
                continue
            read = await self._read(data["id"])
            reads += 1
            if read is None and ctx.canceled.is_set():
                raise ItemCanceled(f"Replicate no longer knows prediction {data['id']}; not created again")
            if read is None:
                recreated += 1
                if recreated > MAX_RECREATES:
                    raise RetryableUpstreamError(
                        f"Replicate answered 404 for prediction {data['id']} as for the {MAX_RECREATES} created "
                        "again before it: the provider is failing, not forgetting")
                grant = await self._forgotten(assignment, data["id"], "read")
                read = await self._creator.create_recorded(assignment, ctx, grant)
                started = time.monotonic()
            data = read
        if data["status"] == "canceled" and ctx.canceled.is_set():
            raise ItemCanceled(f"Replicate canceled prediction {data['id']}")
        return self._finished(model, data, reads)

    async def _canceled(self, data: dict[str, Any]) -> dict[str, Any] | None:
        """Cancel a running prediction upstream: the provider's answer (`canceled`, or
        `succeeded` if it had finished first, or still running: then reads follow), None if it
        no longer knows it. A cancel that cannot be sent leaves the prediction to end on its
        own, read as usual: its end decides."""
        try:
            answer = await self._cancel_answer(data["id"])
        except (TimeoutError, UpstreamError) as exc:
            log.warning("could not cancel prediction %s upstream (%r); following it to its end", data["id"], exc)
            return await self._read(data["id"])
        if answer is not None:
            log.info("canceled prediction %s upstream: %s", data["id"], answer["status"])
        return answer

    async def _wait(self, seconds: float, canceled: asyncio.Event | None) -> None:
        """Sleep, or until the item's job is canceled."""
        if canceled is None:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(canceled.wait(), seconds)

    async def _forgotten(self, assignment: pb.Assignment, prediction_id: str, when: str) -> Grant:
        """The provider answered 404 for the item's recorded prediction (it forgot it, e.g. across
        a restart of its own): the item creates it again, paying a create grant of its own."""
        RECREATED.labels(when).inc()
        log.warning("item %s: Replicate no longer knows prediction %s (404); creating it again",
                    assignment.item_id, prediction_id)
        return await self._creator.pay_grant()

    async def _adopt(self, ctx: CallContext, prediction_id: str) -> bool:
        try:
            return await ctx.record_upstream(prediction_id)
        except grpc.aio.AioRpcError:
            return False  # another item holds this prediction

    def _next_read(self, model: str, elapsed_s: float) -> float:
        if not self._webhook:
            return self.run_times.next_read(model, elapsed_s)
        # The webhook carries the result; a read here only catches a lost webhook.
        safety = self._config.webhook_safety_seconds + (self.run_times.quantile(model, 0.99) or 0.0)
        return max(safety - elapsed_s, self._config.webhook_safety_seconds / 2)

    def _finished(self, model: str, data: dict[str, Any], reads: int) -> Result:
        READS_PER_ITEM.observe(reads)
        if data["status"] == "succeeded":
            self.run_times.observe(model, _timestamp(data.get("completed_at")) - _timestamp(data.get("created_at")))
        return _outcome(data)

    async def _read(self, prediction_id: str) -> dict[str, Any] | None:
        """One paid read of a prediction; None if the provider answers 404 (it no longer knows
        it). Transient failures are waited out here: the prediction runs on regardless, so
        they never fail the item."""
        try:
            prediction = await self._paid_read_call(
                "get", f"read of {prediction_id}", lambda: self._client.predictions.async_get(prediction_id))
        except REPLICATE_ERRORS as exc:
            if replicate_status(exc) == 404:
                return None
            raise replicate_error(exc) from exc
        return as_dict(prediction)

    async def _list_page(self, cursor: Any) -> Page[Prediction]:
        """One page of the account's predictions, newest first, for an orphan search: a paid
        read like any other, so a 429, 5xx, timeout or reset is waited out, not the item's failure."""
        try:
            return await self._paid_read_call(
                "list", "listing of predictions", lambda: self._client.predictions.async_list(cursor))
        except REPLICATE_ERRORS as exc:
            raise replicate_error(exc) from exc

    async def _paid_read_call(self, endpoint: str, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """`call`, paid from the `replicate:read` budget, until it lands: a throttled (its
        wait reported to the ratelimiter) or otherwise transient failure is tried again with
        backoff; a permanent one is raised as the SDK raised it."""
        delay = self._config.poll_initial_seconds
        while True:
            await pay(self._budgets, REPLICATE_READ)
            try:
                async with self._gate.call(self.name, endpoint):
                    return await call()
            except REPLICATE_ERRORS as exc:
                error = replicate_error(exc)
                if not error.retryable:
                    raise
                if replicate_status(exc) == 429:
                    await report_throttle(self._budgets, REPLICATE_READ, error.retry_after_s)
                log.info("%s failed (%s); again in %.1fs", what, error, delay)
                await asyncio.sleep(max(delay, error.retry_after_s))
                delay = min(delay * 2, self._config.poll_max_seconds)

    async def cancel(self, upstream_id: str) -> None:
        """Best effort, for a prediction nobody follows any more (its item was taken away)."""
        if is_intent(upstream_id):
            return
        try:
            await self._cancel_answer(upstream_id)
            log.info("canceled prediction %s upstream", upstream_id)
        except (TimeoutError, UpstreamError) as exc:
            # The item's fate does not depend on it, only the provider's bill.
            log.warning("could not cancel prediction %s upstream: %r", upstream_id, exc)

    async def _cancel_answer(self, prediction_id: str) -> dict[str, Any] | None:
        """`POST …/cancel`, paid from the read budget: the prediction as the provider answers
        (None if it answers 404: it no longer knows it). A prediction left running is billed,
        so a throttled or failed cancel is tried again (a job's cancel sends many at once) for
        up to a minute, then TimeoutError; a refusal is its `UpstreamError`."""
        try:
            async with asyncio.timeout(CANCEL_SECONDS):
                prediction = await self._paid_read_call(
                    "cancel", f"cancel of {prediction_id}",
                    lambda: self._client.predictions.async_cancel(prediction_id))
        except REPLICATE_ERRORS as exc:
            if replicate_status(exc) == 404:
                return None
            raise replicate_error(exc) from exc
        return as_dict(prediction)

    async def close(self) -> None:
        await self._http.aclose()


def _timestamp(text: str | None) -> float:
    if not text:
        return float("nan")
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return float("nan")


def _outcome(prediction: dict[str, Any]) -> Result:
    status = prediction["status"]
    if status == "succeeded":
        return Result(output=prediction.get("output"), usage=prediction.get("metrics") or {})
    error = prediction.get("error") or f"prediction {status}"
    raise PermanentUpstreamError(f"Replicate prediction {prediction['id']} {status}: {error}")
