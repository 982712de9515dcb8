"""The ratelimiter as the scheduler and the predictors see it.

    client = BudgetClient("127.0.0.1:50052", token=config.service_token.get_secret_value())
    got = await client.acquire("replicate:create", 20)
    ...dispatch exactly len(got.grants) calls; if fewer than asked, wait got.retry_after_s...
    await client.settle([(grant.id, used_tokens)])     # or release([...]) if the call never happened
    await client.close()

grpc errors stop at this edge: callers catch `services.ratelimiter.errors` exceptions.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from fairway.ratelimiter.v1 import ratelimiter_pb2, ratelimiter_pb2_grpc

from services.common.auth import service_channel
from services.ratelimiter.errors import BudgetUnavailable, InvalidBudgetRequest, RateLimiterError

# Trailing metadata key with which the server advises when to ask again (seconds, decimal).
RETRY_AFTER_KEY = "retry-after-s"
DEFAULT_RETRY_AFTER_S = 1.0

T = TypeVar("T")


@dataclass(frozen=True)
class GrantRef:
    id: str
    tokens: int


@dataclass(frozen=True)
class Acquired:
    grants: list[GrantRef]
    retry_after_s: float  # >0 when fewer than asked were granted
    limited_by: str  # "requests", "tokens", "concurrency", "cooldown", "tenant" or ""


class BudgetClient:
    def __init__(self, address: str, *, token: str, timeout_s: float = 5.0) -> None:
        """`token`: the caller's FAIRWAY_SERVICE_TOKEN, sent with every call."""
        self._address = address
        self._token = token
        self._timeout_s = timeout_s
        self._channel: grpc.aio.Channel | None = None
        self._stub: ratelimiter_pb2_grpc.RateLimiterStub | None = None

    def _get_stub(self) -> ratelimiter_pb2_grpc.RateLimiterStub:
        # Created on first use so that the client can be built outside a running event loop.
        if self._stub is None:
            self._channel = service_channel(self._address, self._token)
            self._stub = ratelimiter_pb2_grpc.RateLimiterStub(self._channel)
        return self._stub

    async def acquire(
        self,
        budget: str,
        count: int = 1,
        *,
        tokens_each: int = 0,
        tenant: str = "",
        all_or_nothing: bool = False,
    ) -> Acquired:
        request = ratelimiter_pb2.AcquireRequest(
            budget=budget,
            count=count,
            tokens_each=tokens_each,
            tenant=tenant,
            all_or_nothing=all_or_nothing,
        )
        reply = await self._call(lambda stub: stub.Acquire(request, timeout=self._timeout_s))
        return Acquired(
            grants=[GrantRef(g.id, g.tokens) for g in reply.grants],
            retry_after_s=reply.retry_after_s,
            limited_by=reply.limited_by,
        )

    async def settle(self, usages: Sequence[tuple[str, int]]) -> None:
        """Report what each grant really used; the budget is refunded or charged the difference."""
        if not usages:
            return
        request = ratelimiter_pb2.SettleRequest(
            settlements=[ratelimiter_pb2.Settlement(grant_id=g, used_tokens=max(0, u)) for g, u in usages]
        )
        await self._call(lambda stub: stub.Settle(request, timeout=self._timeout_s))

    async def adjust(self, adjustments: Sequence[tuple[str, int]]) -> list[str]:
        """Set what open grants reserve; their new ids in order ("" for a grant already closed)."""
        if not adjustments:
            return []
        request = ratelimiter_pb2.AdjustRequest(
            adjustments=[ratelimiter_pb2.Adjustment(grant_id=g, tokens=max(0, t)) for g, t in adjustments]
        )
        reply = await self._call(lambda stub: stub.Adjust(request, timeout=self._timeout_s))
        return list(reply.grant_ids)

    async def release(self, grant_ids: Sequence[str]) -> None:
        """Give back grants whose upstream call never happened."""
        if not grant_ids:
            return
        request = ratelimiter_pb2.ReleaseRequest(grant_ids=list(grant_ids))
        await self._call(lambda stub: stub.Release(request, timeout=self._timeout_s))

    async def report_upstream(
        self,
        budget: str,
        *,
        throttled: bool = False,
        retry_after_s: float = 0.0,
        remaining_requests: int | None = None,
        remaining_tokens: int | None = None,
        reset_requests_s: float = 0.0,
        reset_tokens_s: float = 0.0,
        limit_requests: int | None = None,
        limit_tokens: int | None = None,
    ) -> None:
        request = ratelimiter_pb2.UpstreamReport(
            budget=budget,
            throttled=throttled,
            retry_after_s=retry_after_s,
            remaining_requests=remaining_requests,
            remaining_tokens=remaining_tokens,
            reset_requests_s=reset_requests_s,
            reset_tokens_s=reset_tokens_s,
            limit_requests=limit_requests,
            limit_tokens=limit_tokens,
        )
        await self._call(lambda stub: stub.ReportUpstream(request, timeout=self._timeout_s))

    async def set_tenant_caps(self, tenant: str, *, budget: str = "", rpm: float = 0.0, max_in_flight: int = 0) -> None:
        """Cap one tenant's share of a budget ("" = every budget); 0 removes that cap."""
        request = ratelimiter_pb2.TenantCaps(tenant=tenant, budget=budget, rpm=rpm, max_in_flight=max_in_flight)
        await self._call(lambda stub: stub.SetTenantCaps(request, timeout=self._timeout_s))

    async def stats(self) -> ratelimiter_pb2.GetStatsResponse:
        request = ratelimiter_pb2.GetStatsRequest()
        return await self._call(lambda stub: stub.GetStats(request, timeout=self._timeout_s))

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
        self._channel = None
        self._stub = None

    async def _call(self, rpc: Callable[[ratelimiter_pb2_grpc.RateLimiterStub], Awaitable[T]]) -> T:
        try:
            return await rpc(self._get_stub())
        except grpc.aio.AioRpcError as exc:
            raise _map_error(exc) from exc


def _map_error(exc: grpc.aio.AioRpcError) -> RateLimiterError:
    code = exc.code()
    detail = exc.details() or code.name
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return BudgetUnavailable(f"ratelimiter unavailable: {detail}", _retry_after(exc))
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND):
        return InvalidBudgetRequest(detail)
    return RateLimiterError(f"ratelimiter failed ({code.name}): {detail}")


def _retry_after(exc: grpc.aio.AioRpcError) -> float:
    metadata: Any = exc.trailing_metadata() or ()
    for key, value in metadata:
        if key == RETRY_AFTER_KEY:
            try:
                return max(0.0, float(value))
            except ValueError:
                break
    return DEFAULT_RETRY_AFTER_S
