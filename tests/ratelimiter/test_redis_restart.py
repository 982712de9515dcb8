"""Redis down: fail closed (UNAVAILABLE with retry advice, NOT_SERVING); Redis back: serving again."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.embedded import EmbeddedRedis
from services.ratelimiter.client import BudgetClient
from services.ratelimiter.errors import BudgetUnavailable
from services.ratelimiter.server import RateLimiterServer
from tests.ratelimiter.conftest import SLOW_LIMITS, Replicas, make_config, write_limits
from tests.support.tokens import TOKENS

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def health_of(address: str) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="fairway.ratelimiter.v1.RateLimiter"), timeout=5
        )
        return int(reply.status)


async def test_redis_restart_fails_closed_then_serves_again(own_redis: EmbeddedRedis, replicas: Replicas) -> None:
    [(process, address)] = replicas(1, own_redis.url, SLOW_LIMITS)
    client = BudgetClient(address, token=TOKENS["scheduler"])
    try:
        assert len((await client.acquire("replicate:read", 2)).grants) == 2

        own_redis.kill()
        with pytest.raises(BudgetUnavailable) as err:
            await client.acquire("replicate:read", 1)
        assert err.value.retry_after_s > 0
        # The failed call itself turned health NOT_SERVING (no probe interval to wait for).
        assert await health_of(address) == NOT_SERVING
        with pytest.raises(BudgetUnavailable):
            await client.settle([("replicate:read||0|1|x.1", 0)])

        own_redis.start()
        # Awaited on the health service: the ratelimiter's probe finds Redis back.
        process.wait_grpc_serving(address)
        assert await health_of(address) == SERVING
        assert len((await client.acquire("replicate:read", 2)).grants) == 2
        assert process.proc is not None and process.proc.poll() is None  # never restarted
    finally:
        await client.close()


async def test_acquire_survives_a_dropped_connection_and_flushed_scripts(
    own_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    # What a Redis restart leaves behind, both at once: the budget's script connection is dead and
    # Redis no longer knows the script.
    parts = RateLimiterServer(make_config(own_redis.url, write_limits(tmp_path / "limits.yaml", SLOW_LIMITS)))
    admin = aioredis.Redis.from_url(own_redis.url)
    try:
        assert len((await parts.limiter.acquire("replicate:read", 1)).grant_ids) == 1
        await admin.script_flush()
        await admin.client_kill_filter(_type="normal", skipme=True)
        assert len((await parts.limiter.acquire("replicate:read", 1)).grant_ids) == 1
    finally:
        await admin.aclose()  # type: ignore[attr-defined]  # stubs predate redis 5
        await parts.store.aclose()
