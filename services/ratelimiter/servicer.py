"""The `fairway.ratelimiter.v1.RateLimiter` gRPC API over the shared decisions."""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import grpc
from fairway.ratelimiter.v1 import ratelimiter_pb2, ratelimiter_pb2_grpc

from services.ratelimiter.client import RETRY_AFTER_KEY
from services.ratelimiter.errors import InvalidBudgetRequest
from services.ratelimiter.feedback import Observation
from services.ratelimiter.limiter import RateLimiter
from services.ratelimiter.store import StoreUnavailable

T = TypeVar("T")


async def call_or_abort(context: Any, work: Awaitable[T], retry_after_s: float) -> T:
    """Map domain failures to gRPC status codes; UNAVAILABLE carries retry advice."""
    try:
        return await work
    except InvalidBudgetRequest as exc:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    except StoreUnavailable as exc:
        await context.abort(
            grpc.StatusCode.UNAVAILABLE,
            f"budget store unreachable, no grants issued ({exc}); retry in {retry_after_s:g}s",
            trailing_metadata=((RETRY_AFTER_KEY, f"{retry_after_s:g}"),),
        )
    raise AssertionError("context.abort returned")  # pragma: no cover - abort always raises


class RateLimiterServicer(ratelimiter_pb2_grpc.RateLimiterServicer):
    def __init__(self, limiter: RateLimiter, *, unavailable_retry_s: float) -> None:
        self._limiter = limiter
        self._retry_s = unavailable_retry_s

    async def Acquire(self, request: ratelimiter_pb2.AcquireRequest, context: Any) -> ratelimiter_pb2.AcquireResponse:
        got = await call_or_abort(
            context,
            self._limiter.acquire(
                request.budget,
                request.count,
                tokens_each=request.tokens_each,
                tenant=request.tenant,
                all_or_nothing=request.all_or_nothing,
            ),
            self._retry_s,
        )
        tokens = request.tokens_each
        reply = ratelimiter_pb2.AcquireResponse(
            grants=[ratelimiter_pb2.Grant(id=i, tokens=tokens) for i in got.grant_ids],
        )
        if got.decision.granted < request.count:
            reply.retry_after_s = got.decision.retry_after_s
            reply.limited_by = got.decision.limited_by
        return reply

    async def Settle(self, request: ratelimiter_pb2.SettleRequest, context: Any) -> ratelimiter_pb2.SettleResponse:
        usages = [(s.grant_id, s.used_tokens) for s in request.settlements]
        adjusted = await call_or_abort(context, self._limiter.settle(usages), self._retry_s)
        return ratelimiter_pb2.SettleResponse(tokens_adjusted=adjusted)

    async def Adjust(self, request: ratelimiter_pb2.AdjustRequest, context: Any) -> ratelimiter_pb2.AdjustResponse:
        adjustments = [(a.grant_id, a.tokens) for a in request.adjustments]
        ids, adjusted = await call_or_abort(context, self._limiter.adjust(adjustments), self._retry_s)
        return ratelimiter_pb2.AdjustResponse(grant_ids=ids, tokens_adjusted=adjusted)

    async def Release(self, request: ratelimiter_pb2.ReleaseRequest, context: Any) -> ratelimiter_pb2.ReleaseResponse:
        released = await call_or_abort(context, self._limiter.release(list(request.grant_ids)), self._retry_s)
        return ratelimiter_pb2.ReleaseResponse(released=released)

    async def ReportUpstream(
        self, request: ratelimiter_pb2.UpstreamReport, context: Any
    ) -> ratelimiter_pb2.UpstreamReportResponse:
        def opt(field: str) -> int | None:
            return int(getattr(request, field)) if request.HasField(field) else None  # type: ignore[arg-type]

        obs = Observation(
            throttled=request.throttled,
            retry_after_s=max(0.0, request.retry_after_s),
            remaining_requests=opt("remaining_requests"),
            remaining_tokens=opt("remaining_tokens"),
            reset_requests_s=max(0.0, request.reset_requests_s),
            reset_tokens_s=max(0.0, request.reset_tokens_s),
            limit_requests=opt("limit_requests"),
            limit_tokens=opt("limit_tokens"),
        )
        factor, cooldown = await call_or_abort(context, self._limiter.report(request.budget, obs), self._retry_s)
        return ratelimiter_pb2.UpstreamReportResponse(rate_factor=factor, cooldown_s=cooldown)

    async def GetStats(
        self, request: ratelimiter_pb2.GetStatsRequest, context: Any
    ) -> ratelimiter_pb2.GetStatsResponse:
        rows = await call_or_abort(context, self._limiter.stats(), self._retry_s)
        reply = ratelimiter_pb2.GetStatsResponse(timestamp=time.time())
        for budget, usage in rows:
            reply.budgets.append(
                ratelimiter_pb2.BudgetStats(
                    name=budget.name,
                    limit_rpm=budget.rpm,
                    requests_last_minute=usage.requests_last_minute,
                    limit_tpm=budget.tpm,
                    tokens_last_minute=usage.tokens_last_minute,
                    denied_last_minute=max(0, usage.denied_last_minute),
                    rate_factor=usage.rate_factor,
                    cooldown_until=usage.cooldown_until_s,
                    burst=budget.burst,
                    rpm_usage_percent=100.0 * usage.requests_last_minute / budget.rpm if budget.rpm else 0.0,
                    tpm_usage_percent=100.0 * usage.tokens_last_minute / budget.tpm if budget.tpm else 0.0,
                    in_flight=usage.in_flight,
                    max_in_flight=budget.max_in_flight,
                    requests_by_second=usage.requests_by_second,
                    tokens_by_second=usage.tokens_by_second,
                )
            )
        return reply

    async def SetTenantCaps(
        self, request: ratelimiter_pb2.TenantCaps, context: Any
    ) -> ratelimiter_pb2.TenantCapsResponse:
        await call_or_abort(
            context,
            self._limiter.set_tenant_caps(
                request.tenant,
                request.budget,
                request.rpm,
                request.max_in_flight,
            ),
            self._retry_s,
        )
        return ratelimiter_pb2.TenantCapsResponse()
