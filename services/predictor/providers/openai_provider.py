"""OpenAI: chat completions, responses and images through the official SDK.

The SDK's own retries are off (`max_retries=0`): a retry is a new upstream call, so it
must be paid from the budget and backed off by the scheduler like any other. Tokens were
reserved at dispatch as the provider counts the request when it arrives (prompt + `n` x the
output cap); the grant is settled with the response's `usage`, which the ratelimiter applies
only to a budget whose provider counts usage. The provider's `x-ratelimit-*` headers and 429s
are reported to the ratelimiter, which corrects the shared budget from them.

When the item's job is canceled mid-request, the request is aborted (the SDK call's task is
canceled, which drops the connection): the item is CANCELED unless the answer came first,
in which case it is DONE with that answer. An aborted request keeps its grant as reserved:
the provider counted it when it arrived.
"""

from __future__ import annotations

import json
import time
from typing import Any

import openai
from fairway.scheduler.v1 import scheduler_pb2 as pb

from services.common.limits import openai_budget
from services.common.logging import get_logger
from services.predictor.config import PredictorConfig
from services.predictor.errors import (
    PermanentUpstreamError,
    UpstreamError,
    never_sent,
    retry_after_seconds,
    status_error,
    transport_error,
)
from services.predictor.providers.base import CallContext, CallGate, ItemCanceled, Result, unless_canceled
from services.ratelimiter.client import BudgetClient
from services.ratelimiter.errors import RateLimiterError

log = get_logger(__name__)
# Header reports are sampled: the ratelimiter's correction needs the trend, not every call.
# A report that the provider's window is nearly spent is always sent.
REPORT_EVERY_S = 0.5
LOW_REMAINING = 0.02
# What the item's `usage` keeps: the counts, not the SDK's nested details.
USAGE_KEYS = ("prompt_tokens", "completion_tokens", "input_tokens", "output_tokens", "total_tokens")
ENDPOINTS = {"chat": "chat.completions", "response": "responses", "image": "images"}


class OpenAIProvider:
    name = "openai"

    def __init__(self, config: PredictorConfig, budgets: BudgetClient, gate: CallGate) -> None:
        self._client = openai.AsyncOpenAI(
            api_key=config.openai_api_key or "missing",
            base_url=config.openai_base_url or None,
            max_retries=0,
            timeout=config.request_timeout_seconds,
        )
        self._budgets = budgets
        self._gate = gate
        self._reported: dict[str, float] = {}

    async def run(self, assignment: pb.Assignment, ctx: CallContext) -> Result:
        params: dict[str, Any] = json.loads(assignment.input_json)
        if not isinstance(params, dict):
            raise PermanentUpstreamError("OpenAI input must be a JSON object")
        operation = assignment.operation
        if operation not in ENDPOINTS:
            raise PermanentUpstreamError(f"unknown OpenAI operation {operation!r}; use chat, response or image")
        budget = openai_budget(assignment.model)
        what = f"the OpenAI {operation} request"
        try:
            if ctx.canceled.is_set():
                raise ItemCanceled(f"{what} was not sent: the job was canceled", sent=False)
            async with self._gate.call(self.name, ENDPOINTS[operation]):
                raw = await unless_canceled(self._call(operation, assignment.model, params), ctx.canceled, what)
        except ItemCanceled as exc:
            if not exc.sent:
                await ctx.release()
            raise
        except openai.APIConnectionError as exc:
            cause = exc.__cause__ or exc
            if never_sent(cause):
                await ctx.release()
            raise transport_error("OpenAI", cause) from exc
        except openai.APIStatusError as exc:
            error = classify(exc)
            # A refused request used no tokens; its request still counted upstream.
            await ctx.settle(0)
            if exc.status_code == 429:
                await self._report(budget, throttled=True, retry_after_s=error.retry_after_s)
            raise error from exc
        except TypeError as exc:  # an input field the SDK does not know
            await ctx.release()
            raise PermanentUpstreamError(f"OpenAI {operation} input is not valid: {exc}") from exc
        await self._report_headers(budget, raw.headers)
        output, usage = shape(operation, raw.parse())
        await ctx.settle(int(usage.get("total_tokens", 0)))
        return Result(output=output, usage=usage)

    async def _call(self, operation: str, model: str, params: dict[str, Any]) -> Any:
        if operation == "chat":
            return await self._client.chat.completions.with_raw_response.create(model=model, **params)
        if operation == "response":
            return await self._client.responses.with_raw_response.create(model=model, **params)
        return await self._client.images.with_raw_response.generate(model=model, **params)

    async def _report_headers(self, budget: str, headers: Any) -> None:
        remaining_requests = _int(headers.get("x-ratelimit-remaining-requests"))
        remaining_tokens = _int(headers.get("x-ratelimit-remaining-tokens"))
        if remaining_requests is None and remaining_tokens is None:
            return
        limit_requests = _int(headers.get("x-ratelimit-limit-requests"))
        limit_tokens = _int(headers.get("x-ratelimit-limit-tokens"))
        low = _low(remaining_requests, limit_requests) or _low(remaining_tokens, limit_tokens)
        now = time.monotonic()
        if not low and now - self._reported.get(budget, -REPORT_EVERY_S) < REPORT_EVERY_S:
            return
        self._reported[budget] = now
        await self._report(
            budget,
            remaining_requests=remaining_requests,
            remaining_tokens=remaining_tokens,
            reset_requests_s=go_duration(headers.get("x-ratelimit-reset-requests", "")),
            reset_tokens_s=go_duration(headers.get("x-ratelimit-reset-tokens", "")),
            limit_requests=limit_requests,
            limit_tokens=limit_tokens,
        )

    async def _report(self, budget: str, **observation: Any) -> None:
        try:
            await self._budgets.report_upstream(budget, **observation)
        except RateLimiterError as exc:
            log.warning("could not report OpenAI limits to the ratelimiter: %s", exc)

    async def cancel(self, upstream_id: str) -> None:
        """Nothing to do: an OpenAI call holds no upstream id, and dropping the connection stops it."""

    async def close(self) -> None:
        await self._client.close()


def shape(operation: str, parsed: Any) -> tuple[Any, dict[str, Any]]:
    """The item's output and compact usage from a parsed SDK response."""
    raw_usage = parsed.usage.model_dump() if getattr(parsed, "usage", None) else {}
    usage = {k: int(raw_usage[k]) for k in USAGE_KEYS if isinstance(raw_usage.get(k), int)}
    if operation == "chat":
        choice = parsed.choices[0]
        output: Any = {"content": choice.message.content, "finish_reason": choice.finish_reason}
    elif operation == "response":
        output = {"text": parsed.output_text}
    else:
        output = {"images": [d.model_dump(exclude_none=True) for d in parsed.data or []]}
    if usage and "total_tokens" not in usage:
        usage["total_tokens"] = sum(usage.get(k, 0) for k in ("input_tokens", "output_tokens"))
    return output, usage


def classify(exc: openai.APIStatusError) -> UpstreamError:
    status = exc.status_code
    body: dict[str, Any] = exc.body if isinstance(exc.body, dict) else {}
    nested = body.get("error")
    error: dict[str, Any] = nested if isinstance(nested, dict) else body
    message = str(error.get("message") or exc.message)
    code = str(error.get("code") or "")
    headers = exc.response.headers
    if code == "insufficient_quota":
        return PermanentUpstreamError(f"the OpenAI account is out of quota; add credit or raise its limit: {message}")
    if code == "content_policy_violation" or "safety system" in message:
        return PermanentUpstreamError(f"OpenAI refused the content (content policy); change the input: {message}")
    if status == 429 and headers.get("x-should-retry") == "false":
        # One request larger than the model's whole tokens-per-minute limit.
        return PermanentUpstreamError(f"the request can never fit OpenAI's token limit; make it smaller: {message}")
    return status_error("OpenAI", status, message, retry_after_s=retry_after_seconds(headers))


def _low(remaining: int | None, limit: int | None) -> bool:
    return remaining is not None and limit is not None and limit > 0 and remaining <= LOW_REMAINING * limit


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def go_duration(text: str) -> float:
    """Seconds in a Go-style duration as OpenAI sends them: "1m30.5s", "120ms", "6s"."""
    total, number = 0.0, ""
    i = 0
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6, "ns": 1e-9}
    while i < len(text):
        ch = text[i]
        if ch.isdigit() or ch == ".":
            number += ch
            i += 1
            continue
        unit = text[i : i + 2] if text[i : i + 2] in ("ms", "us", "ns") else ch
        i += len(unit)
        if number and unit in units:
            total += float(number) * units[unit]
        number = ""
    return total
