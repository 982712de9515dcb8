"""Replicate: create a prediction once, persist its id, then learn how it ended.

The id is recorded with the scheduler before anything waits on the prediction, so a
predictor that dies mid-way is followed by one that resumes polling the same prediction
instead of paying for a second one. Polls are paid from the `replicate:read` budget and
back off exponentially; with `FAIRWAY_PUBLIC_URL` set, the completion arrives as a
webhook at the gateway and this worker only keeps the lease alive.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from fairway.scheduler.v1 import scheduler_pb2 as pb
from replicate.client import Client as ReplicateClient
from replicate.exceptions import ModelError, ReplicateError

from services.common.limits import REPLICATE_READ
from services.predictor.config import PredictorConfig
from services.predictor.errors import PermanentUpstreamError, RetryableUpstreamError, UpstreamError
from services.predictor.providers.base import CallContext, Result
from services.ratelimiter.client import BudgetClient

TERMINAL = ("succeeded", "failed", "canceled")


class ReplicateProvider:
    name = "replicate"

    def __init__(self, config: PredictorConfig, budgets: BudgetClient) -> None:
        self._client = ReplicateClient(
            api_token=config.replicate_api_token or None,
            base_url=config.replicate_base_url or None,
            timeout=httpx.Timeout(config.request_timeout_seconds, connect=5.0),
        )
        # The SDK retries reads on 429/503 on its own; every call Fairway makes must be
        # paid from a budget and backed off by the scheduler, so those retries are off.
        self._client._async_client._transport.max_attempts = 1  # type: ignore[attr-defined]
        self._budgets = budgets
        self._config = config
        self._webhook = f"{config.public_url.rstrip('/')}/v1/webhooks/replicate" if config.public_url else ""

    async def run(self, assignment: pb.Assignment, ctx: CallContext) -> Result:
        prediction_id = assignment.upstream_id
        if not prediction_id:
            prediction = await self._create(assignment, ctx)
            prediction_id = prediction["id"]
            if not await ctx.record_upstream(prediction_id):
                # The lease is gone (canceled or expired): stop the paid work at once.
                await self._cancel(prediction_id)
                raise PermanentUpstreamError("the item was taken away while its prediction started")
            if prediction["status"] in TERMINAL:
                return _outcome(prediction)
        return await self._follow(prediction_id)

    async def _create(self, assignment: pb.Assignment, ctx: CallContext) -> dict[str, Any]:
        params: dict[str, Any] = {"input": json.loads(assignment.input_json)}
        if ":" in assignment.model:
            params["version"] = assignment.model.split(":", 1)[1]
        else:
            params["model"] = assignment.model
        if self._webhook:
            params["webhook"] = self._webhook
            params["webhook_events_filter"] = ["completed"]
        if self._config.replicate_wait_seconds:
            params["wait"] = self._config.replicate_wait_seconds
        try:
            prediction = await self._client.predictions.async_create(**params)
        except httpx.ConnectError as exc:
            await ctx.release()  # never reached the provider
            raise RetryableUpstreamError(f"Replicate unreachable: {exc}") from exc
        except (ReplicateError, httpx.HTTPError) as exc:
            raise _classify(exc) from exc
        return _as_dict(prediction)

    async def _follow(self, prediction_id: str) -> Result:
        if self._webhook:
            # The gateway completes the item from the webhook; this worker just holds the lease
            # until the heartbeat says the item is no longer ours (then the task is canceled).
            await asyncio.Event().wait()
        delay = self._config.poll_initial_seconds
        while True:
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._config.poll_max_seconds)
            got = await self._budgets.acquire(REPLICATE_READ, 1)
            if not got.grants:
                delay = max(delay, got.retry_after_s)
                continue
            try:
                prediction = await self._client.predictions.async_get(prediction_id)
            except (ReplicateError, httpx.HTTPError) as exc:
                error = _classify(exc)
                if not error.retryable:
                    raise error from exc
                delay = max(delay, error.retry_after_s)
                continue
            data = _as_dict(prediction)
            if data["status"] in TERMINAL:
                return _outcome(data)

    async def _cancel(self, prediction_id: str) -> None:
        try:
            got = await self._budgets.acquire(REPLICATE_READ, 1)
            if got.grants:
                await self._client.predictions.async_cancel(prediction_id)
        except Exception:  # best effort: the item's fate does not depend on it
            pass

    async def close(self) -> None:
        await self._client._async_client.aclose()


def _as_dict(prediction: Any) -> dict[str, Any]:
    dump = getattr(prediction, "model_dump", None) or prediction.dict
    return dict(dump())


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
        if status == 429 or status >= 500:
            return RetryableUpstreamError(f"Replicate {status}: {detail}", retry_after_s=_retry_after(detail))
        return PermanentUpstreamError(f"Replicate rejected the request ({status}): {detail}")
    return RetryableUpstreamError(f"Replicate call failed: {exc}")


def _retry_after(detail: str) -> float:
    # "Request was throttled. Your rate limit resets in ~5s."
    marker = "resets in ~"
    if marker in detail:
        digits = detail.split(marker, 1)[1].split("s", 1)[0]
        try:
            return float(digits)
        except ValueError:
            return 0.0
    return 0.0
