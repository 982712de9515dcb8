"""OpenAI: chat completions, responses and images through the official SDK.

The SDK's own retries are off (`max_retries=0`): a retry is a new upstream call, so it
must be paid from the budget and backed off by the scheduler like any other. Tokens were
reserved at dispatch from an estimate; the grant is settled with the response's `usage`,
and the provider's `x-ratelimit-*` headers and 429s are reported to the ratelimiter.
"""

from __future__ import annotations

import json
from typing import Any

import openai
from fairway.scheduler.v1 import scheduler_pb2 as pb

from services.common.limits import openai_budget
from services.predictor.config import PredictorConfig
from services.predictor.errors import PermanentUpstreamError, RetryableUpstreamError, UpstreamError
from services.predictor.providers.base import CallContext, Result
from services.ratelimiter.client import BudgetClient


class OpenAIProvider:
    name = "openai"

    def __init__(self, config: PredictorConfig, budgets: BudgetClient) -> None:
        self._client = openai.AsyncOpenAI(
            api_key=config.openai_api_key or "missing",
            base_url=config.openai_base_url or None,
            max_retries=0,
            timeout=config.request_timeout_seconds,
        )
        self._budgets = budgets

    async def run(self, assignment: pb.Assignment, ctx: CallContext) -> Result:
        params: dict[str, Any] = json.loads(assignment.input_json)
        budget = openai_budget(assignment.model)
        try:
            if assignment.operation == "chat":
                raw = await self._client.chat.completions.with_raw_response.create(
                    model=assignment.model, **params
                )
            elif assignment.operation == "response":
                raw = await self._client.responses.with_raw_response.create(model=assignment.model, **params)
            elif assignment.operation == "image":
                raw = await self._client.images.with_raw_response.generate(model=assignment.model, **params)
            else:
                raise PermanentUpstreamError(f"unknown OpenAI operation {assignment.operation!r}")
        except openai.APIConnectionError as exc:
            if not isinstance(exc, openai.APITimeoutError):
                await ctx.release()
            raise RetryableUpstreamError(f"OpenAI unreachable: {exc}") from exc
        except openai.APIStatusError as exc:
            error = _classify(exc)
            if exc.status_code == 429:
                await self._budgets.report_upstream(budget, throttled=True, retry_after_s=error.retry_after_s)
            raise error from exc
        await self._report_headers(budget, raw.headers)
        parsed = raw.parse()
        output, usage = _shape(assignment.operation, parsed)
        await ctx.settle(int(usage.get("total_tokens", 0)))
        return Result(output=output, usage=usage)

    async def _report_headers(self, budget: str, headers: Any) -> None:
        remaining_requests = _int(headers.get("x-ratelimit-remaining-requests"))
        remaining_tokens = _int(headers.get("x-ratelimit-remaining-tokens"))
        if remaining_requests is None and remaining_tokens is None:
            return
        await self._budgets.report_upstream(
            budget,
            remaining_requests=remaining_requests,
            remaining_tokens=remaining_tokens,
            reset_requests_s=go_duration(headers.get("x-ratelimit-reset-requests", "")),
            reset_tokens_s=go_duration(headers.get("x-ratelimit-reset-tokens", "")),
            limit_requests=_int(headers.get("x-ratelimit-limit-requests")),
            limit_tokens=_int(headers.get("x-ratelimit-limit-tokens")),
        )

    async def close(self) -> None:
        await self._client.close()


def _shape(operation: str, parsed: Any) -> tuple[Any, dict[str, Any]]:
    usage = parsed.usage.model_dump() if getattr(parsed, "usage", None) else {}
    if operation == "chat":
        choice = parsed.choices[0]
        output = {"content": choice.message.content, "finish_reason": choice.finish_reason}
    elif operation == "response":
        output = {"text": parsed.output_text}
        usage.setdefault("total_tokens", usage.get("input_tokens", 0) + usage.get("output_tokens", 0))
    else:
        output = {"images": [d.model_dump(exclude_none=True) for d in parsed.data or []]}
    return output, usage


def _classify(exc: openai.APIStatusError) -> UpstreamError:
    status = exc.status_code
    body = exc.body if isinstance(exc.body, dict) else {}
    message = str(body.get("message") or exc.message)
    retry_after = _retry_after(exc.response.headers)
    if status == 429 or status >= 500 or status == 408:
        return RetryableUpstreamError(f"OpenAI {status}: {message}", retry_after_s=retry_after)
    return PermanentUpstreamError(f"OpenAI rejected the request ({status}): {message}")


def _retry_after(headers: Any) -> float:
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    try:
        return float(headers.get("retry-after") or 0)
    except ValueError:
        return 0.0


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
