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
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import grpc
import httpx
from fairway.scheduler.v1 import scheduler_pb2 as pb
from replicate.client import Client as ReplicateClient
from replicate.exceptions import ModelError, ReplicateError

from services.common.limits import REPLICATE_CREATE, REPLICATE_READ
from services.common.logging import get_logger
from services.predictor.config import PredictorConfig
from services.predictor.errors import (
    PermanentUpstreamError,
    RetryableUpstreamError,
    UpstreamError,
    never_sent,
    retry_after_seconds,
    status_error,
    transport_error,
)
from services.predictor.metrics import READS_PER_ITEM
from services.predictor.providers.base import CallContext, CallGate, LeaseLost, Result
from services.predictor.providers.replicate_recovery import find_orphan, intent_id, is_intent
from services.predictor.providers.run_times import RunTimes
from services.ratelimiter.client import BudgetClient
from services.ratelimiter.errors import RateLimiterError

log = get_logger(__name__)
T = TypeVar("T")
TERMINAL = ("succeeded", "failed", "canceled")
CANCEL_SECONDS = 60.0
DEFAULT_BASE_URL = "https://api.replicate.com"


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

    def __init__(self, config: PredictorConfig, budgets: BudgetClient, gate: CallGate) -> None:
        self._http = httpx.AsyncClient(
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
        self.run_times = RunTimes(
            hit_ratio=config.replicate_read_hit_ratio, first_s=config.poll_initial_seconds,
            max_s=config.poll_max_seconds,
        )

    async def run(self, assignment: pb.Assignment, ctx: CallContext) -> Result:
        model = assignment.model
        upstream_id = assignment.upstream_id
        reads = 0
        data: dict[str, Any] | None = None
        if upstream_id and not is_intent(upstream_id):
            # Resumed after a crash or hand-back: look once at once, since a webhook that
            # arrived while nobody held the item was dropped.
            await ctx.park()
            data = await self._read(upstream_id)
            reads += 1
        elif upstream_id:
            # The previous holder died around its create: adopt what it created, if anything.
            data = await find_orphan(self._client, self._gate, self._pay_read, assignment,
                                     lambda pid: self._adopt(ctx, pid))
            if data is None:
                await self._pay(REPLICATE_CREATE)  # a resumed item comes without a create grant
            else:
                log.info("item %s: adopted prediction %s", assignment.item_id, data["id"])
                await ctx.park()
        if data is None:
            data = await self._create_recorded(assignment, ctx)
            started = time.monotonic()
        else:
            started = time.monotonic() - max(0.0, time.time() - _timestamp(data.get("created_at")))
        if data["status"] in TERMINAL:
            return self._finished(model, data, reads)
        prediction_id = data["id"]
        while True:
            await asyncio.sleep(self._next_read(model, time.monotonic() - started))
            data = await self._read(prediction_id)
            reads += 1
            if data["status"] in TERMINAL:
                return self._finished(model, data, reads)

    async def _create_recorded(self, assignment: pb.Assignment, ctx: CallContext) -> dict[str, Any]:
        """Create the prediction with its id recorded before anything waits on it."""
        if not await ctx.record_upstream(intent_id(assignment.item_id)):
            await ctx.release()
            raise LeaseLost(f"item {assignment.item_id} was taken away before its prediction started")
        async with ctx.uninterrupted():
            data = await self._create(assignment, ctx)
            try:
                recorded = await ctx.record_upstream(data["id"])
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                    raise
                # A resumed item with the same input adopted this prediction first: it is
                # that item's now (so not canceled), and this one creates again.
                raise RetryableUpstreamError(
                    f"prediction {data['id']} was taken over by another item with the same input"
                ) from exc
        if not recorded:
            # The item was canceled or its lease expired while the create ran; nobody
            # will ever follow this prediction, so stop the paid work at once.
            await self.cancel(data["id"])
            raise LeaseLost(f"item {assignment.item_id} was taken away while its prediction started")
        await ctx.park()
        await ctx.settle(0)  # only now: nothing may delay recording the id
        return data

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

    async def _create(self, assignment: pb.Assignment, ctx: CallContext) -> dict[str, Any]:
        params: dict[str, Any] = {"input": json.loads(assignment.input_json)}
        if ":" in assignment.model:
            params["version"] = assignment.model.split(":", 1)[1]
        else:
            params["model"] = assignment.model
        if self._webhook:
            params["webhook"] = self._webhook
            params["webhook_events_filter"] = ["completed"]
        try:
            async with self._gate.call(self.name, "create"):
                prediction = await self._client.predictions.async_create(**params)
        except (ReplicateError, httpx.HTTPError) as exc:
            if never_sent(exc):
                await ctx.release()
            error = _classify(exc)
            if isinstance(exc, ReplicateError) and exc.status == 429:
                await self._report_throttle(REPLICATE_CREATE, error.retry_after_s)
            raise error from exc
        return _as_dict(prediction)

    async def _read(self, prediction_id: str) -> dict[str, Any]:
        """One paid read of a prediction. Transient failures are waited out here: the
        prediction runs on regardless, so they never fail the item."""
        try:
            prediction = await self._paid_read_call(
                "get", f"read of {prediction_id}", lambda: self._client.predictions.async_get(prediction_id))
        except (ReplicateError, httpx.HTTPError) as exc:
            if isinstance(exc, ReplicateError) and exc.status == 404:
                raise PermanentUpstreamError(
                    f"Replicate no longer knows prediction {prediction_id}; submit the item again"
                ) from exc
            raise _classify(exc) from exc
        return _as_dict(prediction)

    async def _paid_read_call(self, endpoint: str, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """`call`, paid from the `replicate:read` budget, until it lands: a throttled (its
        wait reported to the ratelimiter) or otherwise transient failure is tried again with
        backoff; a permanent one is raised as the SDK raised it."""
        delay = self._config.poll_initial_seconds
        while True:
            await self._pay_read()
            try:
                async with self._gate.call(self.name, endpoint):
                    return await call()
            except (ReplicateError, httpx.HTTPError) as exc:
                error = _classify(exc)
                if not error.retryable:
                    raise
                if isinstance(exc, ReplicateError) and exc.status == 429:
                    await self._report_throttle(REPLICATE_READ, error.retry_after_s)
                log.info("%s failed (%s); again in %.1fs", what, error, delay)
                await asyncio.sleep(max(delay, error.retry_after_s))
                delay = min(delay * 2, self._config.poll_max_seconds)

    async def _pay_read(self) -> None:
        """Wait for a grant from the `replicate:read` budget (reads have no dispatch grant)."""
        await self._pay(REPLICATE_READ)

    async def _pay(self, budget: str) -> None:
        """Wait until `budget` grants one call, honouring its advice (and its outages)."""
        while True:
            try:
                got = await self._budgets.acquire(budget, 1)
            except RateLimiterError as exc:
                await asyncio.sleep(max(0.2, getattr(exc, "retry_after_s", 0.0) or 0.5))
                continue
            if got.grants:
                return
            await asyncio.sleep(max(0.01, got.retry_after_s))

    async def _report_throttle(self, budget: str, retry_after_s: float) -> None:
        try:
            await self._budgets.report_upstream(budget, throttled=True, retry_after_s=retry_after_s)
        except RateLimiterError as exc:
            log.warning("could not report a Replicate 429 to the ratelimiter: %s", exc)

    async def cancel(self, upstream_id: str) -> None:
        if is_intent(upstream_id):
            return
        try:
            # Best effort, but a prediction left running is billed: a throttled or failed
            # cancel is tried again (a job's cancel sends many at once) for up to a minute.
            async with asyncio.timeout(CANCEL_SECONDS):
                await self._paid_read_call(
                    "cancel", f"cancel of {upstream_id}", lambda: self._client.predictions.async_cancel(upstream_id))
            log.info("canceled prediction %s upstream", upstream_id)
        except (TimeoutError, ReplicateError, httpx.HTTPError) as exc:
            # The item's fate does not depend on it, only the provider's bill.
            log.warning("could not cancel prediction %s upstream: %r", upstream_id, exc)

    async def close(self) -> None:
        await self._http.aclose()


def _as_dict(prediction: Any) -> dict[str, Any]:
    dump = getattr(prediction, "model_dump", None) or prediction.dict
    return dict(dump())


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


def _classify(exc: Exception) -> UpstreamError:
    if isinstance(exc, ModelError):
        return PermanentUpstreamError(f"Replicate model error: {exc}")
    if isinstance(exc, ReplicateError):
        status = exc.status or 0
        detail = exc.detail or exc.title or str(exc)
        return status_error("Replicate", status, detail, retry_after_s=_retry_after(detail))
    if isinstance(exc, httpx.HTTPStatusError):
        return status_error("Replicate", exc.response.status_code, exc.response.text[:300],
                            retry_after_s=retry_after_seconds(exc.response.headers))
    return transport_error("Replicate", exc)


def _retry_after(detail: str) -> float:
    # The SDK keeps the body, not the headers: "Request was throttled. Your rate limit resets in ~5s."
    marker = "resets in ~"
    if marker in detail:
        digits = detail.split(marker, 1)[1].split("s", 1)[0]
        try:
            return float(digits)
        except ValueError:
            return 0.0
    return 0.0
