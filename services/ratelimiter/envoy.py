"""Envoy's rate limit service (`envoy.service.ratelimit.v3.RateLimitService`) over the budgets.

An Envoy or Istio gateway sends descriptors; each one that names a budget takes
`hits_addend` grants from it, all or nothing. Descriptor entries understood:

    ("budget", "replicate:create")                 the budget by name
    ("provider", "openai"), ("model", "gpt-4o-mini")         -> openai:gpt-4o-mini
    ("provider", "replicate"), ("operation", "create"|"read") -> replicate:create|read
    ("tenant", "store-a")                          checked against the tenant's caps too
    ("tokens", "800")                              estimated tokens per call

Descriptors that name no budget are OK, as Envoy expects of a descriptor without a limit.
If any descriptor is over its limit the answer is OVER_LIMIT and the grants taken for the
others are released. Grants taken here are never settled: the gateway knows no usage.
"""

from __future__ import annotations

import math
from typing import Any

from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from google.protobuf.duration_pb2 import Duration

from services.ratelimiter.limiter import RateLimiter
from services.ratelimiter.servicer import call_or_abort

Code = rls_pb2.RateLimitResponse.Code
Unit = rls_pb2.RateLimitResponse.RateLimit.Unit
SERVICE_NAME = "envoy.service.ratelimit.v3.RateLimitService"


def budget_of(entries: dict[str, str]) -> str | None:
    """The budget a descriptor's entries name, if any."""
    if entries.get("budget"):
        return entries["budget"]
    provider = entries.get("provider", "")
    if provider == "openai" and entries.get("model"):
        return f"openai:{entries['model']}"
    if provider == "replicate" and entries.get("operation") in ("create", "read"):
        return f"replicate:{entries['operation']}"
    return None


def _duration(seconds: float) -> Duration:
    whole = math.floor(seconds)
    return Duration(seconds=whole, nanos=int((seconds - whole) * 1e9))


class EnvoyRateLimitServicer(rls_pb2_grpc.RateLimitServiceServicer):
    def __init__(self, limiter: RateLimiter, *, unavailable_retry_s: float) -> None:
        self._limiter = limiter
        self._retry_s = unavailable_retry_s

    async def ShouldRateLimit(self, request: rls_pb2.RateLimitRequest, context: Any) -> rls_pb2.RateLimitResponse:
        return await call_or_abort(context, self._decide(request), self._retry_s)

    async def _decide(self, request: rls_pb2.RateLimitRequest) -> rls_pb2.RateLimitResponse:
        reply = rls_pb2.RateLimitResponse(overall_code=Code.OK)
        taken: list[str] = []
        longest_wait = 0.0
        for descriptor in request.descriptors:
            entries = {e.key: e.value for e in descriptor.entries}
            name = budget_of(entries)
            if name is None:
                reply.statuses.append(rls_pb2.RateLimitResponse.DescriptorStatus(code=Code.OK))
                continue
            hits = (descriptor.hits_addend.value if descriptor.HasField("hits_addend") else request.hits_addend) or 1
            tokens = int(entries["tokens"]) if entries.get("tokens", "").isdigit() else 0
            got = await self._limiter.acquire(
                name,
                int(hits),
                tokens_each=tokens,
                tenant=entries.get("tenant", ""),
                all_or_nothing=True,
            )
            taken += got.grant_ids
            status = rls_pb2.RateLimitResponse.DescriptorStatus(
                code=Code.OK if got.grant_ids else Code.OVER_LIMIT,
                current_limit=rls_pb2.RateLimitResponse.RateLimit(
                    name=got.budget.name,
                    requests_per_unit=round(got.budget.rpm),
                    unit=Unit.MINUTE,
                ),
                limit_remaining=got.decision.remaining,
            )
            if not got.grant_ids:
                status.duration_until_reset.CopyFrom(_duration(got.decision.retry_after_s))
                longest_wait = max(longest_wait, got.decision.retry_after_s)
                reply.overall_code = Code.OVER_LIMIT
            reply.statuses.append(status)
        if reply.overall_code == Code.OVER_LIMIT:
            if taken:
                await self._limiter.release(taken)
            reply.response_headers_to_add.append(
                rls_pb2.HeaderValue(key="retry-after", value=str(max(1, math.ceil(longest_wait))))
            )
        return reply
