"""The gRPC edge: BudgetClient against a server in-process, and Envoy's RLS API on the same port."""

from __future__ import annotations

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from services.ratelimiter.client import BudgetClient
from services.ratelimiter.errors import InvalidBudgetRequest
from tests.support.tokens import TOKENS, channel_as

Code = rls_pb2.RateLimitResponse.Code


def descriptor(hits: int | None = None, **entries: str) -> rls_pb2.RateLimitDescriptor:
    d = rls_pb2.RateLimitDescriptor(
        entries=[rls_pb2.RateLimitDescriptor.Entry(key=k, value=v) for k, v in entries.items()]
    )
    if hits is not None:
        d.hits_addend.value = hits
    return d


async def test_client_round_trip(grpc_address: str) -> None:
    client = BudgetClient(grpc_address, token=TOKENS["scheduler"])
    try:
        got = await client.acquire("openai:slow-model", 5, tokens_each=10, tenant="store-a")
        assert len(got.grants) == 3 and got.limited_by == "requests" and got.retry_after_s > 0
        assert all(g.tokens == 10 for g in got.grants)
        await client.settle([(got.grants[0].id, 12)])
        await client.release([g.id for g in got.grants[1:]])
        await client.report_upstream("openai:slow-model", remaining_requests=5, limit_requests=6)
        stats = {b.name: b for b in (await client.stats()).budgets}
        slow = stats["openai:slow-model"]
        assert slow.requests_last_minute == 1 and slow.tokens_last_minute == 12
        # Second by second, the current one last: what the minute adds up.
        assert len(slow.requests_by_second) == len(slow.tokens_by_second) == 60
        assert sum(slow.requests_by_second) == 1 and sum(slow.tokens_by_second) == 12
        assert slow.requests_by_second[-1] + slow.requests_by_second[-2] == 1
        assert slow.limit_rpm == 6 and slow.limit_tpm == 60 and slow.burst == 3
        with pytest.raises(InvalidBudgetRequest):
            await client.acquire("unknown", 1)
    finally:
        await client.close()


async def test_envoy_descriptors_map_to_budgets(grpc_address: str) -> None:
    async with channel_as("envoy", grpc_address) as channel:
        stub = rls_pb2_grpc.RateLimitServiceStub(channel)
        ok = await stub.ShouldRateLimit(
            rls_pb2.RateLimitRequest(
                domain="fairway",
                descriptors=[
                    descriptor(provider="replicate", operation="create"),
                    descriptor(path="/unlimited"),
                ],
            )
        )
        assert ok.overall_code == Code.OK
        assert [s.code for s in ok.statuses] == [Code.OK, Code.OK]
        limit = ok.statuses[0].current_limit
        assert (limit.name, limit.requests_per_unit) == ("replicate:create", 6)
        assert limit.unit == rls_pb2.RateLimitResponse.RateLimit.Unit.MINUTE
        assert ok.statuses[0].limit_remaining == 2

        # 2 left in replicate:create: asking 3 is over the limit, and the grant taken
        # from replicate:read for the same request is given back.
        over = await stub.ShouldRateLimit(
            rls_pb2.RateLimitRequest(
                domain="fairway",
                hits_addend=1,
                descriptors=[
                    descriptor(budget="replicate:read", tenant="store-a"),
                    descriptor(hits=3, budget="replicate:create"),
                ],
            )
        )
        assert over.overall_code == Code.OVER_LIMIT
        assert [s.code for s in over.statuses] == [Code.OK, Code.OVER_LIMIT]
        assert over.statuses[1].duration_until_reset.seconds >= 19
        assert any(h.key == "retry-after" for h in over.response_headers_to_add)

        again = await stub.ShouldRateLimit(
            rls_pb2.RateLimitRequest(
                domain="fairway",
                descriptors=[
                    descriptor(hits=2, provider="replicate", operation="create"),
                ],
            )
        )
        assert again.overall_code == Code.OK


async def test_envoy_unknown_budget_is_invalid(grpc_address: str) -> None:
    async with channel_as("envoy", grpc_address) as channel:
        stub = rls_pb2_grpc.RateLimitServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ShouldRateLimit(rls_pb2.RateLimitRequest(descriptors=[descriptor(budget="nope")]))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
